//! The quota guard (CONTRACT.md "The quota guard"): between the apps that share an account's
//! WeChat quota. A client is kept to its `rate_per_second` (bursts up to twice that) and to its
//! `daily_share` of each (account, API)'s daily limit; once WeChat answers 45009 for a pair,
//! the gateway answers for it until Beijing midnight or a clear-quota.
//!
//! On a shared store (Redis) the bucket, the day's counts and the holds are the cluster's: the
//! bucket is drawn from a tenth of a second's worth at a time, counts are reported and holds
//! read once a second ([`QuotaGuard::run`]), and a pair's count is read once when an instance
//! first sees it; nothing else makes a round trip on a call's path. Elsewhere all of it is in
//! memory, and a restart begins the day's counts again.
//!
//! A client with no limits costs a call one atomic read (are any pairs held?).

mod day;
mod holds;
mod learn;
mod rate;
mod refusal;
mod share;
mod status;

pub use day::{beijing_day, beijing_time, next_beijing_midnight};
pub use learn::{DailyLimits, FromWechat};
pub use refusal::Refusal;
pub use status::{ClientUse, PairUse, QuotaStatus};

use crate::config::{ClientConfig, QuotaConfig};
use crate::metrics;
use crate::store::quota::Used as UsedReport;
use crate::store::SharedStore;
use crate::tokens::Clock;
use crate::AppId;
use holds::Holds;
use rate::Rate;
use share::{Limits, Lookup, Take, Used};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often counts are reported to, and holds read from, a shared store.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// WeChat's "daily quota reached".
pub const QUOTA_REACHED: i64 = 45009;

/// Whose quota a call spends: an authorized account's, or the component's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    Authorizer(AppId),
    Component,
}

impl Account {
    /// The appid, or `component`.
    pub fn label(&self) -> String {
        match self {
            Self::Authorizer(appid) => appid.to_string(),
            Self::Component => "component".to_owned(),
        }
    }

    fn parse(label: &str) -> Option<Self> {
        match label {
            "component" => Some(Self::Component),
            appid => AppId::parse(appid).ok().map(Self::Authorizer),
        }
    }
}

/// Something per account and API, looked up without allocating (the API as a `&str`).
type ByPair<T> = HashMap<Account, HashMap<Box<str>, T>>;

fn pair(account: Account, api: &str) -> String {
    format!("{}|{api}", account.label())
}

fn parse_pair(pair: &str) -> Option<(Account, String)> {
    let (account, api) = pair.split_once('|')?;
    Some((Account::parse(account)?, api.to_owned()))
}

/// A client's limits, as its `[[clients]]` entry sets them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClientLimits {
    pub rate_per_second: Option<f64>,
    pub daily_share: Option<f64>,
}

impl ClientLimits {
    fn of(config: &ClientConfig) -> Self {
        Self { rate_per_second: config.rate_per_second, daily_share: config.daily_share }
    }
}

/// One client's state: kept across reloads (a reload changes its limits at once, not its
/// counts), found by its name.
#[derive(Debug)]
pub struct ClientQuota {
    name: String,
    /// `f64` bits: read on every call, written by a reload.
    rate: AtomicU64,
    share: AtomicU64,
    bucket: Rate,
    used: Used,
}

/// `f64::NAN` stands for "no limit" in the atomics.
fn load(cell: &AtomicU64) -> Option<f64> {
    Some(f64::from_bits(cell.load(Ordering::Relaxed))).filter(|v| !v.is_nan())
}

fn store(cell: &AtomicU64, value: Option<f64>) {
    cell.store(value.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed)
}

impl ClientQuota {
    pub fn limits(&self) -> ClientLimits {
        ClientLimits { rate_per_second: load(&self.rate), daily_share: load(&self.share) }
    }

    fn set_limits(&self, limits: ClientLimits) {
        if load(&self.rate) != limits.rate_per_second {
            // A new rate starts from a full bucket of its own, as a new client would.
            self.bucket.reset();
        }
        store(&self.rate, limits.rate_per_second);
        store(&self.share, limits.daily_share);
    }
}

/// What a let-through call must be told about when its answer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Nothing counted.
    Free,
    /// Counted against the client's share on `day`: uncounted unless WeChat accepts it.
    Counted { day: i64 },
}

pub struct QuotaGuard {
    component: AppId,
    store: SharedStore,
    guard: AtomicBool,
    clients: Mutex<HashMap<String, Arc<ClientQuota>>>,
    holds: Holds,
    limits: Limits,
    learn: Arc<dyn DailyLimits>,
    clock: Clock,
}

impl QuotaGuard {
    pub fn new(component: AppId, store: SharedStore, config: &QuotaConfig, learn: Arc<dyn DailyLimits>) -> Arc<Self> {
        Self::with_clock(component, store, config, learn, Clock::new())
    }

    /// With `clock`, as tests set it (the Beijing day's end without waiting for it).
    pub fn with_clock(
        component: AppId,
        store: SharedStore,
        config: &QuotaConfig,
        learn: Arc<dyn DailyLimits>,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Self {
            component,
            store,
            guard: AtomicBool::new(config.guard),
            clients: Mutex::default(),
            holds: Holds::default(),
            limits: Limits::default(),
            learn,
            clock,
        })
    }

    /// A client's state, kept from before a reload, with its limits now; `None` for a client
    /// with none (nothing to keep).
    pub fn client(&self, config: &ClientConfig) -> Option<Arc<ClientQuota>> {
        // Every client's series start at zero, so that rates and alerts see the first refusal.
        for reason in ["rate", "share", "quota"] {
            metrics::RATE_LIMITED.with_label_values(&[&config.name, reason]);
        }
        let limits = ClientLimits::of(config);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if limits == ClientLimits::default() {
            clients.remove(&config.name);
            return None;
        }
        let client = clients.entry(config.name.clone()).or_insert_with(|| {
            Arc::new(ClientQuota {
                name: config.name.clone(),
                rate: AtomicU64::new(f64::NAN.to_bits()),
                share: AtomicU64::new(f64::NAN.to_bits()),
                bucket: Rate::default(),
                used: Used::default(),
            })
        });
        client.set_limits(limits);
        Some(Arc::clone(client))
    }

    /// `[quota]` as a reload leaves it.
    pub fn configure(&self, config: &QuotaConfig) {
        self.guard.store(config.guard, Ordering::Relaxed);
    }

    /// Whether any pair is held: while none is, a client without limits needs no look.
    pub fn holds_any(&self) -> bool {
        self.holds.any()
    }

    /// Whether the call to `api` for `account` of the client named `name` (with its limits'
    /// state, if it has limits) may go to WeChat now.
    pub async fn admit(
        self: &Arc<Self>,
        name: &str,
        client: Option<&ClientQuota>,
        account: Account,
        api: &str,
    ) -> Result<Admitted, Refusal> {
        let refused = self.check(client, account, api).await;
        if let Err(refusal) = &refused {
            metrics::RATE_LIMITED.with_label_values(&[name, refusal.reason()]).inc();
        }
        refused
    }

    async fn check(
        self: &Arc<Self>,
        client: Option<&ClientQuota>,
        account: Account,
        api: &str,
    ) -> Result<Admitted, Refusal> {
        let now_ms = self.clock.now_ms();
        if let Some(until_ms) = self.holds.until(account, api, now_ms) {
            return Err(Refusal::Held { account, api: api.to_owned(), until_ms });
        }
        let Some(client) = client else { return Ok(Admitted::Free) };
        let limits = client.limits();
        if let Some(rate) = limits.rate_per_second {
            let taken = match self.store.quota() {
                Some(shared) => client.bucket.take_shared(shared, &self.component, &client.name, rate).await,
                None => client.bucket.take_local(rate),
            };
            taken.map_err(|retry_after| Refusal::Rate { client: client.name.clone(), rate, retry_after })?;
        }
        match limits.daily_share {
            Some(share) => self.take_share(client, share, account, api, now_ms).await,
            None => Ok(Admitted::Free),
        }
    }

    async fn take_share(
        self: &Arc<Self>,
        client: &ClientQuota,
        share: f64,
        account: Account,
        api: &str,
        now_ms: i64,
    ) -> Result<Admitted, Refusal> {
        let day = beijing_day(now_ms);
        // Counted from the first call, before the limit is learnt (then nothing is refused).
        let allowed = match self.limits.lookup(account, api, day) {
            Lookup::Limit(limit) => (limit as f64 * share).floor() as u64,
            Lookup::Open => u64::MAX,
            Lookup::Ask => {
                self.ask(account, api, day);
                u64::MAX
            }
        };
        let shared = self.store.quota().is_some();
        let mut take = client.used.take(account, api, now_ms, allowed, shared);
        if take == Take::Unread {
            // Once per pair and day on this instance: the other instances' count so far.
            self.report(client).await;
            take = client.used.take(account, api, now_ms, allowed, false);
        }
        match take {
            Take::Refused => Err(Refusal::Share {
                client: client.name.clone(),
                api: api.to_owned(),
                share,
                resets_at_ms: next_beijing_midnight(now_ms),
                now_ms,
            }),
            _ => Ok(Admitted::Counted { day }),
        }
    }

    /// Learns the pair's daily limit in the background: the call that found it unknown goes on.
    fn ask(self: &Arc<Self>, account: Account, api: &str, day: i64) {
        let (guard, api) = (Arc::clone(self), api.to_owned());
        tokio::spawn(async move {
            let limit = guard.learn.daily_limit(account, &api).await;
            guard.limits.learnt(account, &api, day, limit);
        });
    }

    /// What WeChat answered a let-through call: its HTTP status and, when its answer was read
    /// whole, its errcode.
    pub fn answered(
        &self,
        client: Option<&ClientQuota>,
        admitted: Admitted,
        account: Account,
        api: &str,
        status: u16,
        errcode: Option<i64>,
    ) {
        let accepted = (200..300).contains(&status) && matches!(errcode, None | Some(0));
        if let (Some(client), Admitted::Counted { day }, false) = (client, admitted, accepted) {
            client.used.give_back(account, api, day);
        }
        if errcode == Some(QUOTA_REACHED) && self.guard.load(Ordering::Relaxed) {
            self.hold(account, api);
        }
    }

    fn hold(&self, account: Account, api: &str) {
        let until_ms = next_beijing_midnight(self.clock.now_ms());
        tracing::warn!(account = %account.label(), api, until = %beijing_time(until_ms), "WeChat answered 45009: calls for this API are answered by the gateway until Beijing midnight, or until the account's quota is cleared");
        self.holds.hold(account, api, until_ms);
        if self.store.quota().is_some() {
            let (store, component, pair) = (Arc::clone(&self.store), self.component, pair(account, api));
            tokio::spawn(async move {
                if let Some(shared) = store.quota() {
                    if let Err(e) = shared.hold(&component, &pair, until_ms).await {
                        tracing::warn!(error = %e, "a 45009 hold could not be shared; the other instances learn it from WeChat");
                    }
                }
            });
        }
    }

    /// The account's quota was cleared: its holds are lifted, here and for the cluster.
    pub async fn lift(&self, account: Account) {
        self.holds.lift(account);
        if let Some(shared) = self.store.quota() {
            if let Err(e) = shared.lift(&self.component, &account.label()).await {
                tracing::warn!(error = %e, "the lifted holds could not be shared; the other instances keep them until midnight");
            }
        }
    }

    /// Reports `client`'s counts to the shared store and takes back the cluster's totals.
    async fn report(&self, client: &ClientQuota) {
        let Some(shared) = self.store.quota() else { return };
        let (day, sent) = client.used.unsent(self.clock.now_ms());
        if sent.is_empty() {
            return;
        }
        let used: Vec<UsedReport> = sent
            .iter()
            .map(|(account, api, calls)| UsedReport {
                client: client.name.clone(),
                pair: pair(*account, api),
                calls: *calls,
            })
            .collect();
        match shared.add_used(&self.component, day, &used).await {
            Ok(totals) => client.used.reported(day, &sent, &totals),
            Err(e) => {
                tracing::warn!(client = %client.name, error = %e, "daily counts could not be shared; retried in a second")
            }
        }
    }

    /// On a shared store, reports counts and reads holds every second, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.store.quota().is_none() {
            return;
        }
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sync().await,
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn sync(&self) {
        let clients: Vec<_> = self.clients.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for client in clients {
            self.report(&client).await;
        }
        let Some(shared) = self.store.quota() else { return };
        match shared.holds(&self.component).await {
            Ok(all) => {
                let parsed = all.into_iter().filter_map(|(p, until)| parse_pair(&p).map(|(a, api)| (a, api, until)));
                self.holds.replace(parsed, self.clock.now_ms());
            }
            Err(e) => tracing::debug!(error = %e, "45009 holds could not be read; kept as they were"),
        }
    }

    /// Each client's limits and today's use per pair, and the pairs held: the admin API's view.
    pub fn status(&self) -> QuotaStatus {
        let now_ms = self.clock.now_ms();
        let day = beijing_day(now_ms);
        let mut clients: Vec<_> = self.clients.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        let clients = clients
            .iter()
            .map(|c| ClientUse {
                name: c.name.clone(),
                limits: c.limits(),
                today: c
                    .used
                    .list(day)
                    .into_iter()
                    .map(|(account, api, used)| {
                        let daily_limit = self.limits.limit(account, &api, day);
                        PairUse { account, api, used, daily_limit }
                    })
                    .collect(),
            })
            .collect();
        let held = self.holds.list(now_ms);
        QuotaStatus {
            guard: self.guard.load(Ordering::Relaxed),
            day_ends_at_ms: next_beijing_midnight(now_ms),
            clients,
            held,
        }
    }
}

#[cfg(test)]
mod tests;
