//! The refresh protocol's rules, stated once and checked for every kind of credential against
//! every store (memory, SQLite, the real Redis at 127.0.0.1:6379 under a key prefix of its own):
//! one fetch however many callers, what is served is what is stored, a peer's refresh adopted
//! rather than repeated, a lost lease writing nothing, and no caller getting past a backoff.

use super::super::testing::*;
use super::super::*;
use crate::store::{MemoryStore, RedisStore, SqliteStore, Store, TicketKind};
use crate::Secret;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Component,
    Authorizer,
    /// Authorizer 1's jsapi ticket.
    Ticket,
}

const KINDS: [Kind; 3] = [Kind::Component, Kind::Authorizer, Kind::Ticket];

impl Kind {
    async fn refresh(self, t: &TokenService, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        match self {
            Kind::Component => t.component().refresh(want).await,
            Kind::Authorizer => t.authorizers().refresh(&appid(1), want).await,
            Kind::Ticket => match want {
                // The first use, as a page's.
                Want::Valid => t.tickets().get(&appid(1), TicketKind::Jsapi).await,
                want => t.tickets().refresh(&appid(1), TicketKind::Jsapi, want).await,
            },
        }
    }

    async fn held(self, t: &TokenService) -> Arc<AccessToken> {
        self.refresh(t, Want::Valid).await.unwrap()
    }

    /// Calls to this kind's endpoint that WeChat answered.
    fn calls(self, api: &FakeApi) -> u32 {
        api.with(|f| match self {
            Kind::Component => f.component_calls,
            Kind::Authorizer => f.authorizer_calls.get(&appid(1)).copied().unwrap_or(0),
            Kind::Ticket => f.ticket_calls,
        })
    }

    /// Makes this kind's endpoint answer `errcode` (None: answer again).
    fn fail(self, api: &FakeApi, errcode: Option<i64>) {
        api.with(|f| match self {
            Kind::Component => f.component_errcode = errcode,
            Kind::Authorizer => f.fail_errcode = errcode,
            Kind::Ticket => f.ticket_errcode = errcode,
        })
    }

    async fn stored(self, store: &dyn Store) -> Option<String> {
        let held = match self {
            Kind::Component => store.load_component_token(&component()).await.unwrap().map(|t| t.value),
            Kind::Authorizer => {
                store.load_authorizer(&component(), &appid(1)).await.unwrap().and_then(|r| r.access.map(|a| a.value))
            }
            Kind::Ticket => {
                store.load_js_ticket(&component(), &appid(1), TicketKind::Jsapi).await.unwrap().map(|t| t.value)
            }
        };
        held.map(|s| s.expose().to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Memory,
    Sqlite,
    Redis,
}

const BACKENDS: [Backend; 3] = [Backend::Memory, Backend::Sqlite, Backend::Redis];
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Two instances' views of one store: the same memory, one SQLite file opened twice, or two
/// connections to Redis under one fresh prefix.
struct Stores {
    one: SharedStore,
    two: SharedStore,
    _dir: Option<tempfile::TempDir>,
    prefix: Option<String>,
}

impl Stores {
    async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Memory => {
                let store: SharedStore = Arc::new(MemoryStore::new());
                Self { one: Arc::clone(&store), two: store, _dir: None, prefix: None }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("wxgate.sqlite3");
                let one = Arc::new(SqliteStore::open(&path).unwrap());
                let two = Arc::new(SqliteStore::open(&path).unwrap());
                Self { one, two, _dir: Some(dir), prefix: None }
            }
            Backend::Redis => {
                let prefix = format!("wxgate-refresher-{}:", hex::encode(rand::random::<[u8; 6]>()));
                let (url, c) = (Secret::new(REDIS_URL), component());
                let one = Arc::new(
                    RedisStore::connect(&url, &prefix, &c, &crate::store::RedisOptions::default())
                        .await
                        .expect("a Redis at 127.0.0.1:6379"),
                );
                let two = Arc::new(
                    RedisStore::connect(&url, &prefix, &c, &crate::store::RedisOptions::default()).await.unwrap(),
                );
                Self { one, two, _dir: None, prefix: Some(prefix) }
            }
        }
    }

    async fn clean(self) {
        let Some(prefix) = self.prefix else { return };
        use redis::AsyncCommands;
        let mut conn = redis::Client::open(REDIS_URL).unwrap().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
        if !keys.is_empty() {
            let _: i64 = conn.del(keys).await.unwrap();
        }
    }
}

fn settings(lease_ttl: Duration) -> Settings {
    Settings { lease_ttl, ..Settings::new(Duration::from_secs(600)) }
}

/// Instance one with a component token and authorizer 1; instance two started after, on the
/// same store and the same WeChat, answering after `two_delay`.
async fn pair(stores: &Stores, lease_ttl: Duration, one_delay: Duration, two_delay: Duration) -> (Harness, Harness) {
    let flaky = |s: &SharedStore| Arc::new(FlakyStore::over(Arc::clone(s), s.shared()));
    let api = FakeApi::with_delay(FAST);
    let one = start_with(Arc::clone(&api), flaky(&stores.one), settings(lease_ttl)).await;
    push_ticket(&one, "ticket-1").await;
    import(&one, 1).await;
    api.set_delay(one_delay);
    let two = start_with(api.sharing(two_delay), flaky(&stores.two), settings(lease_ttl)).await;
    (one, two)
}

/// Polls `check` every 10 ms, for at most 10 s.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const FAST: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callers_cause_one_fetch_and_get_what_the_store_holds() {
    for backend in BACKENDS {
        for kind in KINDS {
            let stores = Stores::new(backend).await;
            let (one, _two) = pair(&stores, Duration::from_secs(5), Duration::from_millis(100), FAST).await;
            let old = kind.held(&one.tokens).await;
            let before = kind.calls(&one.api);
            let callers: Vec<_> = (0..100)
                .map(|_| {
                    let (tokens, old) = (Arc::clone(&one.tokens), old.value.clone());
                    tokio::spawn(async move { kind.refresh(&tokens, Want::Replace(&old)).await.unwrap() })
                })
                .collect();
            let mut seen = std::collections::HashSet::new();
            for c in callers {
                seen.insert(c.await.unwrap().value.expose().to_owned());
            }
            assert_eq!(seen.len(), 1, "{backend:?} {kind:?}: every caller got the one new token");
            assert_eq!(kind.calls(&one.api), before + 1, "{backend:?} {kind:?}: one fetch for 100 callers");
            let served = seen.into_iter().next().unwrap();
            assert_ne!(served, old.value.expose());
            assert_eq!(kind.stored(stores.one.as_ref()).await, Some(served), "{backend:?} {kind:?}: served = stored");
            stores.clean().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_shared_store_a_peer_refresh_is_adopted_and_a_peer_holding_the_lease_is_waited_for() {
    for backend in BACKENDS {
        for kind in KINDS {
            let stores = Stores::new(backend).await;
            if !stores.one.shared() {
                // Single-instance stores: each instance is the only refresher of its file.
                continue;
            }
            let (one, two) = pair(&stores, Duration::from_secs(5), Duration::from_millis(400), FAST).await;
            // A refresh by one; two, asked to replace what it held, finds it in the store.
            let two_old = kind.held(&two.tokens).await;
            let fresh = kind.refresh(&one.tokens, Want::Now).await.unwrap();
            let before = kind.calls(&one.api);
            let adopted = kind.refresh(&two.tokens, Want::Replace(&two_old.value)).await.unwrap();
            assert_eq!(adopted.value, fresh.value, "{kind:?}: adopted");
            assert_eq!(kind.calls(&one.api), before, "{kind:?}: no second fetch");

            // One holds the lease and waits on WeChat; two waits for it rather than fetching.
            let started = one.api.with(|f| f.started);
            let slow = {
                let tokens = Arc::clone(&one.tokens);
                tokio::spawn(async move { kind.refresh(&tokens, Want::Now).await.unwrap() })
            };
            until("one's fetch has started", || one.api.with(|f| f.started) > started).await;
            let waited = kind.refresh(&two.tokens, Want::Replace(&fresh.value)).await.unwrap();
            assert_eq!(waited.value, slow.await.unwrap().value, "{kind:?}: two got one's token");
            assert_eq!(kind.calls(&one.api), before + 1, "{kind:?}: one fetch for both instances");
            stores.clean().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_passed_to_a_peer_writes_nothing() {
    for backend in BACKENDS {
        for kind in KINDS {
            let stores = Stores::new(backend).await;
            if !stores.one.shared() {
                continue;
            }
            // One's lease lasts 300 ms, its fetch 1.5 s: two takes over and commits first.
            let (one, two) = pair(&stores, Duration::from_millis(300), Duration::from_millis(1500), FAST).await;
            let started = one.api.with(|f| f.started);
            let late = {
                let tokens = Arc::clone(&one.tokens);
                tokio::spawn(async move { kind.refresh(&tokens, Want::Now).await })
            };
            until("one's fetch has started", || one.api.with(|f| f.started) > started).await;
            let taken_over = kind.refresh(&two.tokens, Want::Now).await.unwrap();
            let late = late.await.unwrap().unwrap();
            assert_eq!(late.value, taken_over.value, "{kind:?}: one adopted what two stored");
            assert_eq!(
                kind.stored(stores.one.as_ref()).await.as_deref(),
                Some(taken_over.value.expose()),
                "{kind:?}: one's late write was refused"
            );
            stores.clean().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_fetch_every_caller_gets_its_error_until_the_backoff_ends() {
    for backend in BACKENDS {
        for kind in KINDS {
            let stores = Stores::new(backend).await;
            let (one, _two) = pair(&stores, Duration::from_secs(5), FAST, FAST).await;
            let held = kind.held(&one.tokens).await;
            kind.fail(&one.api, Some(-1));
            let before = kind.calls(&one.api);
            assert!(kind.refresh(&one.tokens, Want::Replace(&held.value)).await.is_err());
            assert_eq!(kind.calls(&one.api), before + 1);
            let callers: Vec<_> = (0..50)
                .map(|_| {
                    let (tokens, held) = (Arc::clone(&one.tokens), held.value.clone());
                    tokio::spawn(async move { kind.refresh(&tokens, Want::Replace(&held)).await })
                })
                .collect();
            for c in callers {
                let error = c.await.unwrap().unwrap_err();
                assert!(error.to_string().contains("errcode -1"), "{backend:?} {kind:?}: {error}");
            }
            assert_eq!(kind.calls(&one.api), before + 1, "{backend:?} {kind:?}: nobody got past the backoff");
            // A valid token is still served, and an operator may still ask.
            assert_eq!(kind.refresh(&one.tokens, Want::Valid).await.unwrap(), held);
            kind.fail(&one.api, None);
            assert_ne!(kind.refresh(&one.tokens, Want::Now).await.unwrap(), held);
            assert_eq!(kind.calls(&one.api), before + 2);
            stores.clean().await;
        }
    }
}

/// How many attempts a backoff allows in `window_ms` at most: each wait is at least half its
/// nominal value (the jitter is 50%–150%).
fn backoff_allows(window_ms: i64, settings: &Settings) -> u32 {
    let (base, max) = (settings.retry_base.as_millis() as i64, settings.retry_max.as_millis() as i64);
    let (mut elapsed, mut attempts) = (0, 1);
    loop {
        elapsed += (base << (attempts - 1).min(20)).min(max) / 2;
        if elapsed > window_ms {
            return attempts;
        }
        attempts += 1;
    }
}

/// Issue 11: whatever the store refuses, callers hammering a credential that cannot be
/// refreshed make no more calls to WeChat than the backoff allows.
#[tokio::test(start_paused = true)]
async fn no_store_state_makes_a_storm_of_calls_to_the_token_endpoints() {
    type Switch = fn(&FlakyStore) -> &std::sync::atomic::AtomicBool;
    let faults: [(&str, Switch); 3] = [
        ("writes refused", |s| &s.refuse_writes),
        ("leases refused", |s| &s.refuse_leases),
        ("leases lost", |s| &s.lose_leases),
    ];
    for (fault, switch) in faults {
        for kind in KINDS {
            let store = Arc::new(FlakyStore::over(Arc::new(MemoryStore::new()), true));
            let h = start(FakeApi::new(), Arc::clone(&store)).await;
            push_ticket(&h, "ticket-1").await;
            import(&h, 1).await;
            let before: Vec<u32> = KINDS.iter().map(|k| k.calls(&h.api)).collect();
            switch(&store).store(true, Ordering::SeqCst);
            // Ten callers for ten minutes: each takes the token and, as if WeChat had refused
            // it, asks for its replacement, ten times a second.
            let window = Duration::from_secs(600);
            let callers: Vec<_> = (0..10)
                .map(|_| {
                    let tokens = Arc::clone(&h.tokens);
                    tokio::spawn(async move {
                        let end = tokio::time::Instant::now() + window;
                        while tokio::time::Instant::now() < end {
                            if let Ok(token) = kind.refresh(&tokens, Want::Valid).await {
                                let _ = kind.refresh(&tokens, Want::Replace(&token.value)).await;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    })
                })
                .collect();
            for c in callers {
                c.await.unwrap();
            }
            let allowed = backoff_allows(window.as_millis() as i64, &h.tokens.core.settings) + 1;
            let made = KINDS.iter().zip(&before).map(|(k, before)| k.calls(&h.api) - before);
            for (made, endpoint) in made.zip(["api_component_token", "api_authorizer_token", "getticket"]) {
                // A component token stored with errors is still put in service: it refreshes
                // once per lifetime, as when nothing fails.
                assert!(made <= allowed, "{fault}, {kind:?}: {made} calls to {endpoint}; the backoff allows {allowed}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_calls_that_bypass_the_backoff() {
    let h = started_with(1).await;
    let before = Kind::Authorizer.calls(&h.api);
    let budget = h.tokens.core.settings.budget_per_minute;
    let metric = || metrics::BUDGET_EXHAUSTED.with_label_values(&["api_authorizer_token"]).get();
    let bitten = metric();
    // An operator's "refresh now" skips the backoff, not the budget.
    let mut refused = 0;
    for _ in 0..budget + 5 {
        match h.tokens.authorizers().refresh_now(&appid(1)).await {
            Ok(_) => {}
            Err(TokenError::Budget { endpoint, retry_in_secs }) => {
                assert_eq!(endpoint, "api_authorizer_token");
                assert!((1..=60).contains(&retry_in_secs), "{retry_in_secs}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(Kind::Authorizer.calls(&h.api) - before, budget);
    assert_eq!(refused, 5);
    assert!(metric() >= bitten + 5);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(h.tokens.authorizers().refresh_now(&appid(1)).await.is_ok(), "a new minute, a new budget");
}
