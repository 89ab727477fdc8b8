//! The Redis store, shared by several gateway instances: the same records as SQLite, plus
//! leases (one refresher per token), fenced writes and change announcements (pub/sub).
//!
//! Keys live under `{key_prefix}{component_appid}:` so that several platforms, or test runs,
//! can share one Redis.
//!
//! Every authorizer write and delete takes the next number of a version counter (`version`) and
//! records it against the appid in a sorted set (`changed`), and its announcement carries it
//! (`authorizer:{appid}@{version}`). An instance remembers the highest version it heard; after
//! a reconnect it reads only what `changed` holds above it, in pipelined batches, instead of
//! every record. Refresh tokens live here: run Redis with AOF (`appendonly yes`,
//! `appendfsync everysec` or `always`); start-up warns when it keeps nothing on disk.

mod link;
mod target;

pub use target::{parse_sentinel_url, SentinelUrl, SENTINEL_SCHEME};

use super::{
    AuthEvent, AuthorizerInfoRecord, AuthorizerRecord, AuthorizerState, Change, ComponentToken, Fence, JsTicket, Lease,
    OutboxStore, Store, StoreError, StoredEvent, Ticket, TicketKind,
};
use crate::{AppId, Secret};
use async_trait::async_trait;
use futures_util::StreamExt;
use link::{Link, WeakLink};
use redis::{AsyncCommands, Script, ScriptInvocation};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use target::Target;
use tokio::sync::broadcast;

/// Keeps `ticket` unless the one held has a later CreateTime.
static SAVE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local held = redis.call('HGET', KEYS[1], 'create_time')
          if held and tonumber(held) > tonumber(ARGV[2]) then return 0 end
          redis.call('HSET', KEYS[1], 'value', ARGV[1], 'create_time', ARGV[2], 'received_at', ARGV[3])
          redis.call('PUBLISH', KEYS[2], 'ticket')
          return 1",
    )
});

/// Records an event once: the dedupe set says whether it is new.
static RECORD_EVENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
          local id = redis.call('INCR', KEYS[2])
          redis.call('HSET', ARGV[2] .. id, 'info_type', ARGV[3], 'authorizer_appid', ARGV[4],
                     'create_time', ARGV[5], 'payload', ARGV[6], 'received_at', ARGV[7])
          redis.call('ZADD', KEYS[3], id, id)
          return id",
    )
});

/// Replaces a hash whole, only while the lease is held (an empty owner: no lease needed), adds
/// the member to a set with its version, and announces the change: checked and written in one step.
static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          redis.call('DEL', KEYS[2])
          redis.call('HSET', KEYS[2], unpack(ARGV, 4))
          local announce = ARGV[3]
          if ARGV[2] ~= '' then
            redis.call('SADD', KEYS[3], ARGV[2])
            local v = redis.call('INCR', KEYS[5])
            redis.call('ZADD', KEYS[6], v, ARGV[2])
            announce = announce .. '@' .. v
          end
          redis.call('PUBLISH', KEYS[4], announce)
          return 1",
    )
});

/// Forgets an authorizer, recording the deletion as a change like any write.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = redis.call('SREM', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2])
          local v = redis.call('INCR', KEYS[3])
          redis.call('ZADD', KEYS[4], v, ARGV[1])
          redis.call('PUBLISH', KEYS[5], 'deleted:' .. ARGV[1] .. '@' .. v)
          return n",
    )
});

/// More changes than this since the last one heard: reload everything rather than announce
/// each (the follower's channel holds 1024 announcements; a batch carries [`SCAN_COUNT`]).
const CATCH_UP_MAX: usize = 200_000;
/// Tries of a catch-up, 250 ms apart, before everything is reloaded instead.
const CATCH_UP_ATTEMPTS: usize = 120;

/// How many entries one SCAN-family step asks for: large pages, few round trips.
const SCAN_COUNT: usize = 1000;

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// How the store talks to Redis, from the `store.redis_*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// The deadline of every command (`store.redis_timeout_ms`).
    pub timeout: Duration,
    /// Replicas that must hold an authorizer's record (its refresh token) or an event before the
    /// write counts as done (`store.redis_wait_replicas`): `WAIT` after the write.
    pub wait_replicas: u32,
    /// How long `WAIT` may take (`store.redis_wait_timeout_ms`).
    pub wait_timeout: Duration,
}

/// What a write needs to count as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The master's answer: tickets, leases, bookkeeping (lost in a failover at worst they cost
    /// a new ticket push or one extra refresh).
    Master,
    /// `WAIT` for the replicas, but a write short of them stands (counted, logged): an authorizer
    /// record, whose refresh token WeChat has already rotated, so that refusing it would take
    /// the only good tokens out of service and change nothing the master holds.
    Preferred,
    /// `WAIT` for the replicas, or the write fails: an event or a message, which WeChat sends
    /// again when it is not answered `success`.
    Replicas,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_millis(1000), wait_replicas: 0, wait_timeout: Duration::from_millis(1000) }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    link: Link,
    options: RedisOptions,
    key_prefix: String,
    /// The component this instance serves: its change channel.
    channel: String,
    /// Who this instance is, in lease values.
    instance: String,
    changes: broadcast::Sender<Change>,
}

impl RedisStore {
    /// Connects, checks persistence, and starts listening for other instances' changes (on the
    /// current runtime, which must outlive the store).
    pub async fn connect(
        url: &Secret,
        key_prefix: &str,
        component: &AppId,
        options: &RedisOptions,
    ) -> Result<Self, StoreError> {
        let target = Target::open(url.expose())
            .map_err(|e| StoreError::Open { path: "store.redis_url".into(), reason: e.to_string() })?;
        let link = Link::connect(target, options.timeout).await?;
        let (changes, _) = broadcast::channel(1024);
        let instance = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>()));
        let channel = format!("{key_prefix}{component}:changes");
        let store =
            Self { link, options: options.clone(), key_prefix: key_prefix.to_owned(), channel, instance, changes };
        store.warn_without_persistence().await;
        // What is in the store now is what the caller loads next: changes after it are caught up.
        let heard: Option<u64> = store.get_u64(&store.key(component, "version")).await?;
        tokio::spawn(Follower::new(&store, *component, heard.unwrap_or(0)).listen());
        Ok(store)
    }

    /// `{key_prefix}{component}:{name}`: every key of one component under one prefix.
    fn key(&self, component: &AppId, name: &str) -> String {
        format!("{}{component}:{name}", self.key_prefix)
    }

    /// The outbox's keys (`redis_outbox.rs`), in the same scheme as the records'.
    pub(super) fn outbox_key(&self, component: &AppId, name: &str) -> String {
        self.key(component, name)
    }

    /// Who this instance is, for the outbox's claim tokens.
    pub(super) fn instance_name(&self) -> &str {
        &self.instance
    }

    /// Runs one of the outbox's scripts through the link (its deadline, fail-fast while Redis is
    /// away); with `durable`, also waits for `store.redis_wait_replicas` replicas, as for events:
    /// a message accepted from WeChat must survive a failover.
    pub(super) async fn outbox_invoke<T>(
        &self,
        invocation: ScriptInvocation<'static>,
        durable: bool,
    ) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.invoke(invocation, if durable { Durability::Replicas } else { Durability::Master }).await
    }

    async fn warn_without_persistence(&self) {
        let settings = self
            .link
            .run(|mut conn| async move {
                let aof: redis::RedisResult<(String, String)> =
                    redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut conn).await;
                let rdb: redis::RedisResult<(String, String)> =
                    redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut conn).await;
                Ok((aof, rdb))
            })
            .await;
        match settings {
            Ok((Ok((_, aof)), Ok((_, save)))) if aof == "no" && save.trim().is_empty() => tracing::warn!(
                "Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses every refresh token; enable appendonly"
            ),
            Ok((Ok((_, aof)), _)) if aof == "no" => tracing::warn!("Redis runs without AOF: refresh tokens written since the last snapshot are lost if it crashes"),
            Ok((Ok(_), Ok(_))) => {}
            _ => tracing::warn!("cannot read Redis's persistence settings (CONFIG GET refused); make sure it keeps refresh tokens on disk"),
        }
    }

    async fn get_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let key = key.to_owned();
        self.link.run(|mut c| async move { c.get(key).await }).await
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let (key, field) = (key.to_owned(), field.to_owned());
        self.link.run(|mut c| async move { c.hget(key, field).await }).await
    }

    async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        let key = key.to_owned();
        self.link.run(|mut c| async move { c.hgetall(key).await }).await
    }

    /// Runs a script; unless `durability` is [`Durability::Master`], waits for
    /// `store.redis_wait_replicas` replicas to hold what it wrote, on the same connection (WAIT
    /// counts that connection's writes): a write only the master holds could be lost in a failover.
    async fn invoke<T>(&self, invocation: ScriptInvocation<'static>, durability: Durability) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let durable = durability != Durability::Master;
        let wait = (durable && self.options.wait_replicas > 0)
            .then_some((self.options.wait_replicas, self.options.wait_timeout));
        let deadline = self.options.timeout + wait.map_or(Duration::ZERO, |(_, t)| t);
        let command = |mut c: redis::aio::MultiplexedConnection| async move {
            let value: T = invocation.invoke_async(&mut c).await?;
            let acked = match wait {
                Some((n, t)) => {
                    let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
                    Some(redis::cmd("WAIT").arg(n).arg(ms).query_async::<u32>(&mut c).await?)
                }
                None => None,
            };
            Ok((value, acked))
        };
        let (value, acked) = match wait {
            Some(_) => self.link.run_alone(deadline, command).await?,
            None => self.link.run_within(deadline, command).await?,
        };
        match (wait, acked) {
            (Some((n, t)), Some(acked)) if acked < n => {
                // Most often a failover under way: the master we write to has lost its replica.
                self.link.suspect();
                let short =
                    format!("redis: the write reached {acked} of the {n} replicas required within {t:?} (WAIT)");
                if durability == Durability::Replicas {
                    return Err(StoreError::Unavailable(short));
                }
                crate::metrics::STORE_UNREPLICATED.inc();
                tracing::warn!("{short}; the master holds it and it stays in service");
                Ok(value)
            }
            _ => Ok(value),
        }
    }

    /// What a catch-up reads: the current version, the records changed since `heard` (in batches) and the appids
    /// deleted; `None` when only a full reload will do.
    #[allow(clippy::type_complexity)]
    pub async fn changed_since(
        &self,
        component: &AppId,
        heard: u64,
    ) -> Result<Option<(u64, Vec<Vec<AuthorizerRecord>>, Vec<AppId>)>, StoreError> {
        let (store, c) = (self, component);
        let version = store.get_u64(&store.key(c, "version")).await?;
        let version = version.unwrap_or(0);
        if version < heard {
            return Ok(None);
        }
        if version == heard {
            return Ok(Some((version, Vec::new(), Vec::new())));
        }
        let changed = store.key(c, "changed");
        let appids: Vec<String> = store
            .link
            .run(|mut conn| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(changed)
                    .arg(format!("({heard}"))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if appids.len() > CATCH_UP_MAX {
            return Ok(None);
        }
        let appids: Vec<AppId> = appids.iter().filter_map(|a| AppId::parse(a).ok()).collect();
        let (mut batches, mut deleted) = (Vec::new(), Vec::new());
        for chunk in appids.chunks(SCAN_COUNT) {
            let records = store.load_many(c, chunk).await?;
            let found: std::collections::HashSet<AppId> = records.iter().map(|r| r.appid).collect();
            deleted.extend(chunk.iter().filter(|a| !found.contains(a)).copied());
            batches.push(records);
        }
        Ok(Some((version, batches, deleted)))
    }

    /// The records of `appids`, read in one pipeline; an appid without a record is left out.
    async fn load_many(&self, component: &AppId, appids: &[AppId]) -> Result<Vec<AuthorizerRecord>, StoreError> {
        if appids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for appid in appids {
            pipe.hgetall(self.key(component, &format!("authorizer:{appid}")));
        }
        let maps: Vec<HashMap<String, String>> =
            self.link.run(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut records = Vec::with_capacity(maps.len());
        for (appid, map) in appids.iter().zip(maps) {
            if !map.is_empty() {
                records.push(authorizer_from(appid, &map)?);
            }
        }
        Ok(records)
    }

    async fn fenced_write(
        &self,
        component: &AppId,
        lease: Option<&Lease>,
        hash: &str,
        member: &str,
        announce: &str,
        fields: Vec<(&str, String)>,
    ) -> Result<bool, StoreError> {
        let lease_key = lease.map_or_else(String::new, |l| l.key.clone());
        let mut invocation = FENCED_WRITE.key(lease_key);
        invocation.key(hash).key(self.key(component, "authorizers")).key(self.key(component, "changes"));
        invocation.key(self.key(component, "version")).key(self.key(component, "changed"));
        invocation.arg(lease.map_or("", |l| l.owner.as_str())).arg(member).arg(announce);
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        // Authorizer records carry the refresh token: they should survive a failover. But WeChat
        // has already rotated it, so a record short of replicas is still the only good one.
        let durability = if member.is_empty() { Durability::Master } else { Durability::Preferred };
        let written: i64 = self.invoke(invocation, durability).await?;
        Ok(written == 1)
    }
}

/// Follows one component's change channel on a connection of its own to the master in use,
/// subscribing again after every reconnect of the store's link (a Redis restart, a failover).
/// It holds the link weakly: the follower ends with the store.
struct Follower {
    link: WeakLink,
    options: RedisOptions,
    key_prefix: String,
    channel: String,
    instance: String,
    changes: broadcast::Sender<Change>,
    component: AppId,
    /// The highest version announced and heard: after a reconnect, only later ones are read.
    heard: u64,
}

impl Follower {
    fn new(store: &RedisStore, component: AppId, heard: u64) -> Self {
        Self {
            link: store.link.downgrade(),
            options: store.options.clone(),
            key_prefix: store.key_prefix.clone(),
            channel: store.channel.clone(),
            instance: store.instance.clone(),
            changes: store.changes.clone(),
            component,
            heard,
        }
    }

    /// The store while it lives, to read on its link (every command with its deadline).
    fn store(&self) -> Option<RedisStore> {
        Some(RedisStore {
            link: self.link.upgrade()?,
            options: self.options.clone(),
            key_prefix: self.key_prefix.clone(),
            channel: self.channel.clone(),
            instance: self.instance.clone(),
            changes: self.changes.clone(),
        })
    }

    /// Runs while the store lives. After every (re)subscription it catches up with what was
    /// written meanwhile, since announcements made while unsubscribed are lost.
    async fn listen(mut self) {
        let Some(mut generations) = self.link.upgrade().map(|l| l.generations()) else { return };
        let (channel, tx, timeout) = (self.channel.clone(), self.changes.clone(), self.options.timeout);
        loop {
            generations.borrow_and_update();
            let Some(client) = self.link.upgrade().and_then(|l| l.client()) else {
                // Redis is away: wait for the link to reconnect (or the store to go).
                if generations.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let subscribed = tokio::time::timeout(timeout, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            })
            .await;
            match subscribed {
                Ok(Ok(mut pubsub)) => {
                    self.catch_up(&tx).await;
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => {
                                    let payload = message.get_payload::<String>().ok();
                                    if let Some((change, version)) = payload.as_deref().and_then(parse_change) {
                                        self.heard = self.heard.max(version.unwrap_or(0));
                                        let _ = tx.send(change);
                                    }
                                }
                                None => break,
                            },
                            changed = generations.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                break;
                            }
                        }
                    }
                    tracing::warn!("lost the Redis change channel; subscribing again");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to Redis changes; retrying"),
                Err(_) => tracing::warn!("cannot subscribe to Redis changes: no answer in time; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Announces what changed above `heard`: the ticket and component token (two small reads),
    /// and the authorizers in batches. A version counter lower than `heard` means Redis lost
    /// data (a restart without persistence): everything is reloaded.
    async fn catch_up(&mut self, tx: &broadcast::Sender<Change>) {
        // A Redis that has just restarted answers LOADING while it reads its data back: wait
        // for it (a few seconds) rather than fall back to reloading everything.
        let mut result = self.changed_since().await;
        for _ in 0..CATCH_UP_ATTEMPTS {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            result = self.changed_since().await;
        }
        match result {
            Ok(Some((version, records, deleted))) => {
                let _ = tx.send(Change::Ticket);
                let _ = tx.send(Change::ComponentToken);
                for batch in records {
                    let _ = tx.send(Change::Authorizers(batch));
                }
                for appid in deleted {
                    let _ = tx.send(Change::Deleted(appid));
                }
                self.heard = version;
            }
            Ok(None) => {
                let _ = tx.send(Change::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read what changed in Redis meanwhile; reloading everything");
                let _ = tx.send(Change::Resync);
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn changed_since(&self) -> Result<Option<(u64, Vec<Vec<AuthorizerRecord>>, Vec<AppId>)>, StoreError> {
        let store = self.store().ok_or_else(|| StoreError::Unavailable("redis: the store is gone".into()))?;
        store.changed_since(&self.component, self.heard).await
    }
}

/// A change and, for authorizers, its version (`authorizer:{appid}@{version}`).
fn parse_change(payload: &str) -> Option<(Change, Option<u64>)> {
    let (body, version) = match payload.rsplit_once('@') {
        Some((body, v)) => (body, Some(v.parse().ok()?)),
        None => (payload, None),
    };
    let change = match body.split_once(':') {
        None if body == "ticket" => Change::Ticket,
        None if body == "component" => Change::ComponentToken,
        Some(("authorizer", appid)) => Change::Authorizer(AppId::parse(appid).ok()?),
        Some(("deleted", appid)) => Change::Deleted(AppId::parse(appid).ok()?),
        Some(("js_ticket", rest)) => {
            let (kind, appid) = rest.split_once(':')?;
            Change::JsTicket(AppId::parse(appid).ok()?, TicketKind::parse(kind)?)
        }
        _ => return None,
    };
    Some((change, version))
}

fn field<T: std::str::FromStr>(map: &HashMap<String, String>, name: &str) -> Result<T, StoreError> {
    map.get(name).and_then(|v| v.parse().ok()).ok_or_else(|| StoreError::Corrupt(format!("field {name}")))
}

fn authorizer_fields(r: &AuthorizerRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("state", r.state.as_str().to_owned()),
        ("access_expires_at", r.access_expires_at.to_string()),
        ("authorized_at", r.authorized_at.to_string()),
        ("last_refresh_at", r.last_refresh_at.to_string()),
    ];
    let optional = [
        ("refresh_token", r.refresh_token.as_ref().map(|s| s.expose().to_owned())),
        ("access_token", r.access_token.as_ref().map(|s| s.expose().to_owned())),
        ("last_error", r.last_error.clone()),
        ("auth_code_sha1", r.auth_code_sha1.clone()),
    ];
    fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    fields
}

fn authorizer_from(appid: &AppId, map: &HashMap<String, String>) -> Result<AuthorizerRecord, StoreError> {
    let state: String = field(map, "state")?;
    Ok(AuthorizerRecord {
        appid: *appid,
        state: AuthorizerState::parse(&state).ok_or_else(|| StoreError::Corrupt("field state".into()))?,
        refresh_token: map.get("refresh_token").cloned().map(Secret::new),
        access_token: map.get("access_token").cloned().map(Secret::new),
        access_expires_at: field(map, "access_expires_at")?,
        authorized_at: field(map, "authorized_at")?,
        last_refresh_at: field(map, "last_refresh_at")?,
        last_error: map.get("last_error").cloned(),
        auth_code_sha1: map.get("auth_code_sha1").cloned(),
    })
}

fn component_fields(t: &ComponentToken) -> Vec<(&'static str, String)> {
    vec![
        ("value", t.value.expose().to_owned()),
        ("expires_at", t.expires_at.to_string()),
        ("obtained_at", t.obtained_at.to_string()),
    ]
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn outbox(&self) -> &dyn OutboxStore {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.link.run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await?;
        Ok(())
    }

    async fn load_ticket(&self, component: &AppId) -> Result<Option<Ticket>, StoreError> {
        let map = self.hgetall(&self.key(component, "ticket")).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(Ticket {
            value: Secret::new(field::<String>(&map, "value")?),
            create_time: field(&map, "create_time")?,
            received_at: field(&map, "received_at")?,
        }))
    }

    async fn save_ticket(&self, component: &AppId, t: &Ticket) -> Result<bool, StoreError> {
        let mut invocation = SAVE_TICKET.key(self.key(component, "ticket"));
        invocation.key(self.key(component, "changes")).arg(t.value.expose()).arg(t.create_time).arg(t.received_at);
        // A ticket lost in a failover is replaced by WeChat's next push within 10 minutes.
        let kept: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(kept == 1)
    }

    async fn record_event(&self, component: &AppId, e: &AuthEvent) -> Result<bool, StoreError> {
        let dedupe = format!("{}|{}|{}", e.info_type, e.authorizer_appid, e.create_time);
        let mut invocation = RECORD_EVENT.key(self.key(component, "events:dedupe"));
        invocation.key(self.key(component, "events:seq")).key(self.key(component, "events:pending"));
        invocation.arg(dedupe).arg(self.key(component, "event:")).arg(&e.info_type).arg(&e.authorizer_appid);
        invocation.arg(e.create_time).arg(e.payload.expose()).arg(e.received_at);
        // WeChat is answered `success` once this returns, and does not send the event again.
        let id: i64 = self.invoke(invocation, Durability::Replicas).await?;
        Ok(id > 0)
    }

    async fn pending_events(&self, component: &AppId) -> Result<Vec<StoredEvent>, StoreError> {
        let pending = self.key(component, "events:pending");
        let ids: Vec<i64> = self.link.run(|mut c| async move { c.zrange(pending, 0, -1).await }).await?;
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let map = self.hgetall(&self.key(component, &format!("event:{id}"))).await?;
            events.push(StoredEvent {
                id,
                event: AuthEvent {
                    info_type: field(&map, "info_type")?,
                    authorizer_appid: map.get("authorizer_appid").cloned().unwrap_or_default(),
                    create_time: field(&map, "create_time")?,
                    payload: Secret::new(field::<String>(&map, "payload")?),
                    received_at: field(&map, "received_at")?,
                },
            });
        }
        Ok(events)
    }

    async fn finish_event(&self, component: &AppId, id: i64) -> Result<(), StoreError> {
        let pending = self.key(component, "events:pending");
        let _: i64 = self.link.run(|mut c| async move { c.zrem(pending, id).await }).await?;
        Ok(())
    }

    async fn load_component_token(&self, component: &AppId) -> Result<Option<ComponentToken>, StoreError> {
        let map = self.hgetall(&self.key(component, "component_token")).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(ComponentToken {
            value: Secret::new(field::<String>(&map, "value")?),
            expires_at: field(&map, "expires_at")?,
            obtained_at: field(&map, "obtained_at")?,
        }))
    }

    async fn save_component_token(&self, component: &AppId, token: &ComponentToken) -> Result<(), StoreError> {
        self.fenced_write(
            component,
            None,
            &self.key(component, "component_token"),
            "",
            "component",
            component_fields(token),
        )
        .await
        .map(drop)
    }

    /// Page by page (SSCAN and a pipeline each), never one round trip per authorizer.
    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let mut all = HashMap::new();
        let mut cursor = super::ScanCursor::start();
        loop {
            let page = self.scan_authorizers(component, &cursor, SCAN_COUNT).await?;
            all.extend(page.records.into_iter().map(|r| (r.appid, r)));
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(all.into_values().collect()),
            }
        }
    }

    /// One SSCAN step of the set of appids, then one pipeline for their records.
    async fn scan_authorizers(
        &self,
        component: &AppId,
        cursor: &super::ScanCursor,
        limit: usize,
    ) -> Result<super::ScanPage, StoreError> {
        let from: u64 = if cursor.is_start() {
            0
        } else {
            cursor.0.parse().map_err(|_| StoreError::Corrupt("scan cursor".into()))?
        };
        let set = self.key(component, "authorizers");
        let (next, appids): (u64, Vec<String>) = self
            .link
            .run(|mut c| async move {
                redis::cmd("SSCAN").arg(set).arg(from).arg("COUNT").arg(limit.max(1)).query_async(&mut c).await
            })
            .await?;
        let appids: Vec<AppId> = appids.iter().filter_map(|a| AppId::parse(a).ok()).collect();
        let records = self.load_many(component, &appids).await?;
        Ok(super::ScanPage { records, next: (next != 0).then(|| super::ScanCursor(next.to_string())) })
    }

    async fn load_authorizer(&self, component: &AppId, appid: &AppId) -> Result<Option<AuthorizerRecord>, StoreError> {
        let map = self.hgetall(&self.key(component, &format!("authorizer:{appid}"))).await?;
        if map.is_empty() {
            return Ok(None);
        }
        authorizer_from(appid, &map).map(Some)
    }

    async fn save_authorizer(&self, component: &AppId, r: &AuthorizerRecord) -> Result<(), StoreError> {
        let hash = self.key(component, &format!("authorizer:{}", r.appid));
        self.fenced_write(
            component,
            None,
            &hash,
            r.appid.as_str(),
            &format!("authorizer:{}", r.appid),
            authorizer_fields(r),
        )
        .await
        .map(drop)
    }

    async fn delete_authorizer(&self, component: &AppId, appid: &AppId) -> Result<bool, StoreError> {
        let mut invocation = DELETE.key(self.key(component, "authorizers"));
        invocation.key(self.key(component, &format!("authorizer:{appid}")));
        invocation.key(self.key(component, "version")).key(self.key(component, "changed"));
        invocation.key(self.key(component, "changes")).arg(appid.as_str());
        let n: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(n > 0)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lease(&self, component: &AppId, what: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let fence_key = self.key(component, "fence");
        let key = self.key(component, &format!("lease:{what}"));
        let instance = self.instance.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.link
            .run(|mut c| async move {
                let fence: i64 = c.incr(fence_key, 1).await?;
                let lease = Lease { key, owner: format!("{instance}:{fence}") };
                let taken: Option<String> = redis::cmd("SET")
                    .arg(&lease.key)
                    .arg(&lease.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c)
                    .await?;
                Ok(taken.map(|_| lease))
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut invocation = RELEASE.key(&lease.key);
        invocation.arg(&lease.owner);
        let _: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(())
    }

    async fn save_component_token_leased(
        &self,
        component: &AppId,
        token: &ComponentToken,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.fenced_write(
            component,
            fence.lease(),
            &self.key(component, "component_token"),
            "",
            "component",
            component_fields(token),
        )
        .await
    }

    async fn save_authorizer_leased(
        &self,
        component: &AppId,
        r: &AuthorizerRecord,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        let hash = self.key(component, &format!("authorizer:{}", r.appid));
        self.fenced_write(
            component,
            fence.lease(),
            &hash,
            r.appid.as_str(),
            &format!("authorizer:{}", r.appid),
            authorizer_fields(r),
        )
        .await
    }

    async fn load_js_ticket(&self, c: &AppId, a: &AppId, kind: TicketKind) -> Result<Option<JsTicket>, StoreError> {
        let map = self.hgetall(&self.key(c, &format!("js_ticket:{}:{a}", kind.as_str()))).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(JsTicket {
            value: Secret::new(field::<String>(&map, "value")?),
            expires_at: field(&map, "expires_at")?,
            obtained_at: field(&map, "obtained_at")?,
        }))
    }

    async fn save_js_ticket(
        &self,
        c: &AppId,
        a: &AppId,
        kind: TicketKind,
        t: &JsTicket,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        let name = format!("js_ticket:{}:{a}", kind.as_str());
        let fields = vec![
            ("value", t.value.expose().to_owned()),
            ("expires_at", t.expires_at.to_string()),
            ("obtained_at", t.obtained_at.to_string()),
        ];
        self.fenced_write(c, fence.lease(), &self.key(c, &name), "", &name, fields).await
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    /// One hash of documents (`infos`, appid → JSON) and one index (`user_names`, gh → appid),
    /// written together.
    async fn save_authorizer_info(&self, component: &AppId, info: &AuthorizerInfoRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.key(component, "infos"), info.appid.as_str(), info.to_json().to_string()).ignore();
        if let Some(user_name) = &info.user_name {
            pipe.hset(self.key(component, "user_names"), user_name, info.appid.as_str()).ignore();
        }
        self.link.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    async fn load_authorizer_info(
        &self,
        component: &AppId,
        appid: &AppId,
    ) -> Result<Option<AuthorizerInfoRecord>, StoreError> {
        let doc = self.hget(&self.key(component, "infos"), appid.as_str()).await?;
        doc.map(|d| info_from(appid, &d)).transpose()
    }

    async fn load_authorizer_infos(&self, component: &AppId) -> Result<Vec<AuthorizerInfoRecord>, StoreError> {
        let key = self.key(component, "infos");
        let (mut cursor, mut infos) = (0u64, Vec::new());
        loop {
            let key = key.clone();
            let (next, page): (u64, Vec<(String, String)>) = self
                .link
                .run(|mut c| async move {
                    redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(SCAN_COUNT).query_async(&mut c).await
                })
                .await?;
            for (appid, doc) in page {
                let appid =
                    AppId::parse(&appid).map_err(|_| StoreError::Corrupt("info of a malformed appid".into()))?;
                infos.push(info_from(&appid, &doc)?);
            }
            if next == 0 {
                return Ok(infos);
            }
            cursor = next;
        }
    }

    async fn find_user_name(&self, component: &AppId, user_name: &str) -> Result<Option<AppId>, StoreError> {
        let found = self.hget(&self.key(component, "user_names"), user_name).await?;
        Ok(found.and_then(|a| AppId::parse(&a).ok()))
    }
}

fn info_from(appid: &AppId, doc: &str) -> Result<AuthorizerInfoRecord, StoreError> {
    serde_json::from_str(doc)
        .ok()
        .and_then(|v| AuthorizerInfoRecord::from_json(*appid, &v))
        .ok_or_else(|| StoreError::Corrupt(format!("info of {appid}")))
}

#[cfg(test)]
mod tests {
    //! Against the real Redis at 127.0.0.1:6379 (`.ci/run` starts one), each test under a key
    //! prefix of its own, removed at the end.
    use super::super::contract_tests;
    use super::*;

    const URL: &str = "redis://127.0.0.1:6379/0";

    fn prefix() -> String {
        format!("wxgate-test-{}:", hex::encode(rand::random::<[u8; 6]>()))
    }

    async fn store(prefix: &str) -> RedisStore {
        RedisStore::connect(&Secret::new(URL), prefix, &contract_tests::component(), &RedisOptions::default())
            .await
            .expect("a Redis at 127.0.0.1:6379")
    }

    async fn clean(prefix: &str) {
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
        let other =
            RedisStore::connect(&Secret::new(URL), &p, &contract_tests::component_b(), &RedisOptions::default())
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
        assert!(
            !one.save_authorizer_leased(&c, &late, Fence::Lease(&held)).await.unwrap(),
            "fenced: the lease passed on"
        );
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
        let follower = Follower::new(&one, c, heard);
        let (version, batches, deleted) = follower.changed_since().await.unwrap().expect("a delta");
        assert_eq!(version, heard + 2);
        assert_eq!(batches.concat(), [changed]);
        assert_eq!(deleted, [gone]);
        let caught_up = Follower { heard: version, ..follower };
        let (_, batches, deleted) = caught_up.changed_since().await.unwrap().unwrap();
        assert!(batches.concat().is_empty() && deleted.is_empty());
        let ahead = Follower { heard: version + 10, ..caught_up };
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
        // Give the listener time to subscribe (Redis drops what is published before).
        tokio::time::sleep(Duration::from_millis(500)).await;
        two.save_authorizer(&c, &contract_tests::authorizer("wx2222222222222222", "r")).await.unwrap();
        two.save_ticket(&c, &contract_tests::ticket("t", 9)).await.unwrap();
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
}
