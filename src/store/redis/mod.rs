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

mod follower;
mod link;
mod outbox;
mod quota;
mod records;
mod releases;
mod scripts;
mod target;

pub use target::{parse_sentinel_url, SentinelUrl, SENTINEL_SCHEME};

use super::{
    AuthEvent, AuthorizerInfoRecord, AuthorizerRecord, AuthorizerState, Change, ComponentToken, Fence, JsTicket, Lease,
    OutboxStore, Store, StoreError, StoredEvent, Ticket, TicketKind,
};
use crate::{AppId, Secret};
use async_trait::async_trait;
use follower::Follower;
use link::Link;
use records::{authorizer_from_row, RECORD_FIELDS};
use redis::{AsyncCommands, ScriptInvocation};
use scripts::{DELETE, FENCED_WRITE, RECORD_EVENT, RELEASE, SAVE_TICKET};
use std::collections::HashMap;
use std::time::Duration;
use target::Target;
use tokio::sync::broadcast;

/// More changes than this since the last one heard: reload everything rather than announce
/// each (the follower's channel holds 1024 announcements; a batch carries [`SCAN_COUNT`]).
const CATCH_UP_MAX: usize = 200_000;
/// Tries of a catch-up, 250 ms apart, before everything is reloaded instead.
const CATCH_UP_ATTEMPTS: usize = 120;

/// How many entries one SCAN-family step asks for: large pages, few round trips.
const SCAN_COUNT: usize = 1000;

/// What changed in Redis after a version an instance heard, for its catch-up.
#[derive(Debug, Default)]
pub struct Delta {
    /// The version it is caught up to.
    pub version: u64,
    /// The authorizers written since, in batches.
    pub authorizers: Vec<Vec<AuthorizerRecord>>,
    /// The authorizers deleted since.
    pub deleted: Vec<AppId>,
    /// The JS-SDK tickets written since.
    pub js_tickets: Vec<(AppId, TicketKind)>,
}

/// What a fenced write records besides its hash.
#[derive(Debug, Clone, Copy)]
pub(super) enum Versioned<'a> {
    /// Nothing: the ticket and the component token, which every catch-up reads anyway.
    No,
    /// An authorizer (this appid): in the set of authorizers, and under a new version.
    Authorizer(&'a str),
    /// Another change a catch-up must announce again (`js_ticket:KIND:APPID`).
    Change(&'a str),
}

/// The JS-SDK ticket a `js_ticket:KIND:APPID` change names.
fn js_ticket_of(change: &str) -> Option<(AppId, TicketKind)> {
    let (kind, appid) = change.strip_prefix("js_ticket:")?.split_once(':')?;
    Some((AppId::parse(appid).ok()?, TicketKind::parse(kind)?))
}

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
    /// Outcomes of delivery attempts, settled in batches (`outbox/settles.rs`).
    settles: outbox::Settles,
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
        let (key_prefix, settles) = (key_prefix.to_owned(), outbox::Settles::default());
        let store = Self { link, options: options.clone(), key_prefix, channel, instance, changes, settles };
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

    /// The outbox's keys (`outbox.rs`), in the same scheme as the records'.
    fn outbox_key(&self, component: &AppId, name: &str) -> String {
        self.key(component, name)
    }

    /// This store without its settle batcher: the batcher's own, so that it does not hold itself.
    fn without_settles(&self) -> Self {
        Self { settles: outbox::Settles::default(), ..self.clone() }
    }

    /// Who this instance is, for the outbox's claim tokens.
    fn instance_name(&self) -> &str {
        &self.instance
    }

    /// Runs one of the outbox's scripts through the link (its deadline, fail-fast while Redis is
    /// away); with `durable`, also waits for `store.redis_wait_replicas` replicas, as for events:
    /// a message accepted from WeChat must survive a failover.
    async fn outbox_invoke<T>(&self, invocation: ScriptInvocation<'static>, durable: bool) -> Result<T, StoreError>
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
    pub async fn changed_since(&self, component: &AppId, heard: u64) -> Result<Option<Delta>, StoreError> {
        let (store, c) = (self, component);
        let version = store.get_u64(&store.key(c, "version")).await?;
        let version = version.unwrap_or(0);
        if version < heard {
            return Ok(None);
        }
        let mut delta = Delta { version, ..Delta::default() };
        if version == heard {
            return Ok(Some(delta));
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
        let (tickets, appids): (Vec<&String>, Vec<&String>) = appids.iter().partition(|a| a.starts_with("js_ticket:"));
        delta.js_tickets = tickets.into_iter().filter_map(|t| js_ticket_of(t)).collect();
        let appids: Vec<AppId> = appids.into_iter().filter_map(|a| AppId::parse(a).ok()).collect();
        for chunk in appids.chunks(SCAN_COUNT) {
            let records = store.load_many(c, chunk).await?;
            let found: std::collections::HashSet<AppId> = records.iter().map(|r| r.appid).collect();
            delta.deleted.extend(chunk.iter().filter(|a| !found.contains(a)).copied());
            delta.authorizers.push(records);
        }
        Ok(Some(delta))
    }

    /// The records of `appids`, read in one pipeline; an appid without a record is left out.
    /// HMGET of a fixed field list rather than HGETALL: values only, in a known order, so that
    /// a million records at start-up are not a million hash maps of field names.
    async fn load_many(&self, component: &AppId, appids: &[AppId]) -> Result<Vec<AuthorizerRecord>, StoreError> {
        if appids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for appid in appids {
            pipe.cmd("HMGET").arg(self.key(component, &format!("authorizer:{appid}"))).arg(&RECORD_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> =
            self.link.run(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut records = Vec::with_capacity(rows.len());
        for (appid, row) in appids.iter().zip(rows) {
            if let Some(record) = authorizer_from_row(appid, row)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn fenced_write(
        &self,
        component: &AppId,
        lease: Option<&Lease>,
        hash: &str,
        versioned: Versioned<'_>,
        announce: &str,
        fields: Vec<(&str, String)>,
    ) -> Result<bool, StoreError> {
        let lease_key = lease.map_or_else(String::new, |l| l.key.clone());
        let mut invocation = FENCED_WRITE.key(lease_key);
        invocation.key(hash).key(self.key(component, "authorizers")).key(self.key(component, "changes"));
        invocation.key(self.key(component, "version")).key(self.key(component, "changed"));
        let (member, change) = match versioned {
            Versioned::No => ("", ""),
            Versioned::Authorizer(appid) => (appid, appid),
            Versioned::Change(change) => ("", change),
        };
        invocation.arg(lease.and_then(|l| l.owner.as_deref()).unwrap_or("")).arg(member).arg(announce).arg(change);
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

#[cfg(test)]
pub(crate) mod tests;
