//! The Redis store, shared by several gateway instances: the same records as SQLite, plus
//! leases (one refresher per token), fenced writes and change announcements (pub/sub).
//!
//! Keys live under `{key_prefix}{component_appid}:` so that several platforms, or test runs,
//! can share one Redis. Refresh tokens live here: run Redis with AOF (`appendonly yes`,
//! `appendfsync everysec` or `always`); start-up warns when it keeps nothing on disk.

mod link;
mod target;

pub use target::{parse_sentinel_url, SentinelUrl, SENTINEL_SCHEME};

use super::{
    AuthEvent, AuthorizerRecord, AuthorizerState, Change, ComponentToken, Fence, JsTicket, Lease, Store, StoreError,
    StoredEvent, Ticket, TicketKind,
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
/// the member to a set, and announces the change: checked and written in one step.
static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          redis.call('DEL', KEYS[2])
          redis.call('HSET', KEYS[2], unpack(ARGV, 4))
          if ARGV[2] ~= '' then redis.call('SADD', KEYS[3], ARGV[2]) end
          redis.call('PUBLISH', KEYS[4], ARGV[3])
          return 1",
    )
});

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
        tokio::spawn(listen(store.link.downgrade(), store.channel.clone(), store.changes.clone(), options.timeout));
        Ok(store)
    }

    /// `{key_prefix}{component}:{name}`: every key of one component under one prefix.
    fn key(&self, component: &AppId, name: &str) -> String {
        format!("{}{component}:{name}", self.key_prefix)
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

    async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        let key = key.to_owned();
        self.link.run(|mut c| async move { c.hgetall(key).await }).await
    }

    /// Runs a script; with `durable`, waits for `store.redis_wait_replicas` replicas to hold what
    /// it wrote, on the same connection (WAIT counts that connection's writes), and fails unless
    /// they did: a write only the master holds could be lost in a failover.
    async fn invoke<T>(&self, invocation: ScriptInvocation<'static>, durable: bool) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
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
                Err(StoreError::Unavailable(format!(
                    "redis: the write reached {acked} of the {n} replicas required within {t:?} (WAIT)"
                )))
            }
            _ => Ok(value),
        }
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
        invocation.arg(lease.map_or("", |l| l.owner.as_str())).arg(member).arg(announce);
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        // Authorizer records carry the refresh token: they must survive a failover.
        let durable = !member.is_empty();
        let written: i64 = self.invoke(invocation, durable).await?;
        Ok(written == 1)
    }
}

/// Follows the change channel on a connection of its own to the master in use, subscribing
/// again after every reconnect of the store's link (a Redis restart, a failover); after every
/// subscription it announces a resync, since changes made meanwhile were not heard.
async fn listen(link: WeakLink, channel: String, tx: broadcast::Sender<Change>, timeout: Duration) {
    let Some(mut generations) = link.upgrade().map(|l| l.generations()) else { return };
    loop {
        generations.borrow_and_update();
        let Some(client) = link.upgrade().and_then(|l| l.client()) else {
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
                let _ = tx.send(Change::Resync);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Some(change) = message.get_payload::<String>().ok().and_then(|p| parse_change(&p)) {
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

fn parse_change(payload: &str) -> Option<Change> {
    match payload.split_once(':') {
        None if payload == "ticket" => Some(Change::Ticket),
        None if payload == "component" => Some(Change::ComponentToken),
        Some(("authorizer", appid)) => AppId::parse(appid).ok().map(Change::Authorizer),
        Some(("deleted", appid)) => AppId::parse(appid).ok().map(Change::Deleted),
        Some(("js_ticket", rest)) => {
            let (kind, appid) = rest.split_once(':')?;
            Some(Change::JsTicket(AppId::parse(appid).ok()?, TicketKind::parse(kind)?))
        }
        _ => None,
    }
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
        let kept: i64 = self.invoke(invocation, false).await?;
        Ok(kept == 1)
    }

    async fn record_event(&self, component: &AppId, e: &AuthEvent) -> Result<bool, StoreError> {
        let dedupe = format!("{}|{}|{}", e.info_type, e.authorizer_appid, e.create_time);
        let mut invocation = RECORD_EVENT.key(self.key(component, "events:dedupe"));
        invocation.key(self.key(component, "events:seq")).key(self.key(component, "events:pending"));
        invocation.arg(dedupe).arg(self.key(component, "event:")).arg(&e.info_type).arg(&e.authorizer_appid);
        invocation.arg(e.create_time).arg(e.payload.expose()).arg(e.received_at);
        // WeChat is answered `success` once this returns, and does not send the event again.
        let id: i64 = self.invoke(invocation, true).await?;
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

    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let set = self.key(component, "authorizers");
        let appids: Vec<String> = self.link.run(|mut c| async move { c.smembers(set).await }).await?;
        let mut records = Vec::with_capacity(appids.len());
        for appid in appids.iter().filter_map(|a| AppId::parse(a).ok()) {
            if let Some(r) = self.load_authorizer(component, &appid).await? {
                records.push(r);
            }
        }
        Ok(records)
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
        let (set, hash, channel) = (
            self.key(component, "authorizers"),
            self.key(component, &format!("authorizer:{appid}")),
            self.key(component, "changes"),
        );
        let (member, announce) = (appid.as_str().to_owned(), format!("deleted:{appid}"));
        self.link
            .run(|mut c| async move {
                let removed: i64 = c.srem(set, member).await?;
                let deleted: i64 = c.del(hash).await?;
                let _: i64 = c.publish(channel, announce).await?;
                Ok(removed + deleted > 0)
            })
            .await
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
        let _: i64 = self.invoke(invocation, false).await?;
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
