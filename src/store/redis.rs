//! The Redis store, shared by several gateway instances: the same records as SQLite, plus
//! leases (one refresher per token), fenced writes and change announcements (pub/sub).
//!
//! Keys live under `{key_prefix}{component_appid}:` so that several platforms, or test runs,
//! can share one Redis. Refresh tokens live here: run Redis with AOF (`appendonly yes`,
//! `appendfsync everysec` or `always`); start-up warns when it keeps nothing on disk.

use super::{
    AuthEvent, AuthorizerRecord, AuthorizerState, Change, ComponentToken, Lease, OutboxStore, Store, StoreError,
    StoredEvent, Ticket,
};
use crate::{AppId, Secret};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
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

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    key_prefix: String,
    /// The component this instance serves: its change channel.
    channel: String,
    /// Who this instance is, in lease values.
    instance: String,
    changes: broadcast::Sender<Change>,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects, checks persistence, and starts listening for other instances' changes (on the
    /// current runtime, which must outlive the store).
    pub async fn connect(url: &Secret, key_prefix: &str, component: &AppId) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| StoreError::Open { path: "store.redis_url".into(), reason: e.to_string() })?;
        let conn = ConnectionManager::new(client.clone()).await.map_err(unavailable)?;
        let (changes, _) = broadcast::channel(1024);
        let instance = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>()));
        let channel = format!("{key_prefix}{component}:changes");
        let store = Self { conn, key_prefix: key_prefix.to_owned(), channel, instance, changes };
        store.warn_without_persistence().await;
        tokio::spawn(listen(client, store.channel.clone(), store.changes.clone()));
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

    /// Runs one of the outbox's scripts on the store's connection.
    pub(super) async fn outbox_invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        invocation.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)
    }

    async fn warn_without_persistence(&self) {
        let mut conn = self.conn.clone();
        let aof: redis::RedisResult<(String, String)> =
            redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut conn).await;
        let rdb: redis::RedisResult<(String, String)> =
            redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut conn).await;
        match (aof, rdb) {
            (Ok((_, aof)), Ok((_, save))) if aof == "no" && save.trim().is_empty() => tracing::warn!(
                "Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses every refresh token; enable appendonly"
            ),
            (Ok((_, aof)), _) if aof == "no" => tracing::warn!("Redis runs without AOF: refresh tokens written since the last snapshot are lost if it crashes"),
            (Err(_), _) | (_, Err(_)) => tracing::warn!("cannot read Redis's persistence settings (CONFIG GET refused); make sure it keeps refresh tokens on disk"),
            _ => {}
        }
    }

    async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        self.conn.clone().hgetall(key).await.map_err(unavailable)
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
        let written: i64 = invocation.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(written == 1)
    }
}

/// Follows the change channel, reconnecting after a Redis restart; after every (re)connect it
/// announces a resync, since changes made meanwhile were not heard.
async fn listen(client: redis::Client, channel: String, tx: broadcast::Sender<Change>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    let _ = tx.send(Change::Resync);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        if let Some(change) = message.get_payload::<String>().ok().and_then(|p| parse_change(&p)) {
                            let _ = tx.send(change);
                        }
                    }
                }
                tracing::warn!("lost the Redis change channel; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis changes; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn parse_change(payload: &str) -> Option<Change> {
    match payload.split_once(':') {
        None if payload == "ticket" => Some(Change::Ticket),
        None if payload == "component" => Some(Change::ComponentToken),
        Some(("authorizer", appid)) => AppId::parse(appid).ok().map(Change::Authorizer),
        Some(("deleted", appid)) => AppId::parse(appid).ok().map(Change::Deleted),
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

    fn outbox(&self) -> &dyn OutboxStore {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
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
        let kept: i64 = SAVE_TICKET
            .key(self.key(component, "ticket"))
            .key(self.key(component, "changes"))
            .arg(t.value.expose())
            .arg(t.create_time)
            .arg(t.received_at)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(kept == 1)
    }

    async fn record_event(&self, component: &AppId, e: &AuthEvent) -> Result<bool, StoreError> {
        let dedupe = format!("{}|{}|{}", e.info_type, e.authorizer_appid, e.create_time);
        let id: i64 = RECORD_EVENT
            .key(self.key(component, "events:dedupe"))
            .key(self.key(component, "events:seq"))
            .key(self.key(component, "events:pending"))
            .arg(dedupe)
            .arg(self.key(component, "event:"))
            .arg(&e.info_type)
            .arg(&e.authorizer_appid)
            .arg(e.create_time)
            .arg(e.payload.expose())
            .arg(e.received_at)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(id > 0)
    }

    async fn pending_events(&self, component: &AppId) -> Result<Vec<StoredEvent>, StoreError> {
        let ids: Vec<i64> =
            self.conn.clone().zrange(self.key(component, "events:pending"), 0, -1).await.map_err(unavailable)?;
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
        let _: i64 = self.conn.clone().zrem(self.key(component, "events:pending"), id).await.map_err(unavailable)?;
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
        let appids: Vec<String> =
            self.conn.clone().smembers(self.key(component, "authorizers")).await.map_err(unavailable)?;
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
        let mut conn = self.conn.clone();
        let removed: i64 = conn.srem(self.key(component, "authorizers"), appid.as_str()).await.map_err(unavailable)?;
        let deleted: i64 = conn.del(self.key(component, &format!("authorizer:{appid}"))).await.map_err(unavailable)?;
        let _: i64 =
            conn.publish(self.key(component, "changes"), format!("deleted:{appid}")).await.map_err(unavailable)?;
        Ok(removed + deleted > 0)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lease(&self, component: &AppId, what: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.conn.clone();
        let fence: i64 = conn.incr(self.key(component, "fence"), 1).await.map_err(unavailable)?;
        let lease =
            Lease { key: self.key(component, &format!("lease:{what}")), owner: format!("{}:{fence}", self.instance) };
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lease.key)
            .arg(&lease.owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(taken.map(|_| lease))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let _: i64 = RELEASE
            .key(&lease.key)
            .arg(&lease.owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn save_component_token_leased(
        &self,
        component: &AppId,
        token: &ComponentToken,
        lease: &Lease,
    ) -> Result<bool, StoreError> {
        self.fenced_write(
            component,
            Some(lease),
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
        lease: &Lease,
    ) -> Result<bool, StoreError> {
        let hash = self.key(component, &format!("authorizer:{}", r.appid));
        self.fenced_write(
            component,
            Some(lease),
            &hash,
            r.appid.as_str(),
            &format!("authorizer:{}", r.appid),
            authorizer_fields(r),
        )
        .await
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
        RedisStore::connect(&Secret::new(URL), prefix, &contract_tests::component())
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
        let other = RedisStore::connect(&Secret::new(URL), &p, &contract_tests::component_b()).await.unwrap();
        assert!(other.load_ticket(&contract_tests::component_b()).await.unwrap().is_none());
        clean(&p).await;
        let p = prefix();
        contract_tests::tokens_and_authorizers_round_trip(&store(&p).await).await;
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
        assert!(one.save_authorizer_leased(&c, &record, &held).await.unwrap());
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let taken = two.lease(&c, "wx1111111111111111", ttl).await.unwrap().expect("expired, so free");
        let late = AuthorizerRecord { refresh_token: Some(Secret::new("stale")), ..record.clone() };
        assert!(!one.save_authorizer_leased(&c, &late, &held).await.unwrap(), "fenced: the lease passed on");
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
