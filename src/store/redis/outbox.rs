//! The Redis outbox, shared by every instance on one Redis: each step is one Lua script, so
//! that a claim (attempt counted, next attempt a lease ahead, claim token set) is atomic and
//! two instances never take the same message at once.
//!
//! Keys, under the store's `{key_prefix}{component}:`:
//! - `outbox:msg:{id}`: the message, a hash (its `claim` field while an attempt holds it);
//! - `outbox:due:{route}`: a sorted set of the route's pending ids by next attempt;
//! - `outbox:routes`: the routes that may have pending messages;
//! - `outbox:pending`, `outbox:failed`: sorted sets of ids by arrival, for listing and counting;
//! - `outbox:seen:{authorizer}:{key}`: WeChat's dedupe keys, `SET NX PX`, expiring by themselves;
//! - `outbox:lane:{route}:{authorizer}`: a sorted set of a lane's ids by `seq`, for messages that
//!   have one (platform events), whose first member is the only one of the lane that is claimed.
//!   A message passed over for its lane is moved, in its route's due set only, behind its lane's
//!   first; when that one leaves, the next gets its own due time back.

use super::RedisStore;
use crate::store::outbox::{
    Claim, DeliveryId, MessageKind, OutboxEntry, OutboxMessage, OutboxState, OutboxStore, Outcome,
};
use crate::store::StoreError;
use crate::{AppId, Secret};
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

mod scripts;
mod settles;

pub(super) use settles::Settles;

use scripts::{
    CLAIM, COUNTS, DELETE, DUE_ROUTES, ENQUEUE, ENQUEUE_FIRST, ENTRY_FIELDS, FIRST_TIME, FORGET, LIST, NEXT_DUE,
    REDELIVER, RELEASE_CLAIMS,
};

impl RedisStore {
    fn seen_key(&self, component: &AppId, authorizer: &AppId, key: &str) -> String {
        self.outbox_key(component, &format!("outbox:seen:{authorizer}:{key}"))
    }

    /// ENQUEUE's keys and arguments, after whatever the invocation holds already.
    fn enqueue_args(&self, invocation: &mut redis::ScriptInvocation<'static>, component: &AppId, m: &OutboxMessage) {
        let who = m.authorizer.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let lane = self.outbox_key(component, &format!("outbox:lane:{}:{who}", m.route));
        invocation
            .key(self.msg_key(component, &m.id))
            .key(self.outbox_key(component, &format!("outbox:due:{}", m.route)))
            .key(self.outbox_key(component, "outbox:routes"))
            .key(self.outbox_key(component, "outbox:pending"))
            .key(&lane)
            .arg(m.id.as_str())
            .arg(&m.route)
            .arg(m.next_attempt_at_ms)
            .arg(m.received_at_ms)
            .arg(m.seq.map(|s| s.to_string()).unwrap_or_default());
        let fields = [
            ("id", Some(m.id.to_string())),
            ("authorizer", m.authorizer.map(|a| a.to_string())),
            ("kind", Some(m.kind.as_str().to_owned())),
            ("seq", m.seq.map(|s| s.to_string())),
            ("lane", m.seq.map(|_| lane.clone())),
            ("route", Some(m.route.clone())),
            ("msg_type", Some(m.msg_type.clone())),
            ("event", m.event.clone()),
            ("payload", Some(m.payload.expose().to_owned())),
            ("received_at", Some(m.received_at_ms.to_string())),
            ("attempts", Some(m.attempts.to_string())),
            ("next_attempt_at", Some(m.next_attempt_at_ms.to_string())),
            ("state", Some(m.state.as_str().to_owned())),
            ("last_error", m.last_error.clone()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                invocation.arg(name).arg(value);
            }
        }
    }

    fn msg_key(&self, component: &AppId, id: &DeliveryId) -> String {
        self.outbox_key(component, &format!("outbox:msg:{id}"))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("outbox message field {what}"))
}

fn number<T: std::str::FromStr>(value: Option<&String>, what: &str) -> Result<T, StoreError> {
    value.and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(what))
}

fn entry_from(fields: &HashMap<String, String>) -> Result<OutboxEntry, StoreError> {
    let text = |name: &str| fields.get(name).cloned().ok_or_else(|| corrupt(name));
    Ok(OutboxEntry {
        id: DeliveryId::parse(&text("id")?).map_err(|_| corrupt("id"))?,
        authorizer: fields.get("authorizer").map(|a| AppId::parse(a).map_err(|_| corrupt("authorizer"))).transpose()?,
        // Messages kept before platform events existed have no kind: they are an account's.
        kind: fields
            .get("kind")
            .map_or(Some(MessageKind::Account), |k| MessageKind::parse(k))
            .ok_or_else(|| corrupt("kind"))?,
        route: text("route")?,
        msg_type: text("msg_type")?,
        event: fields.get("event").cloned(),
        received_at_ms: number(fields.get("received_at"), "received_at")?,
        attempts: number(fields.get("attempts"), "attempts")?,
        next_attempt_at_ms: number(fields.get("next_attempt_at"), "next_attempt_at")?,
        state: fields.get("state").and_then(|s| OutboxState::parse(s)).ok_or_else(|| corrupt("state"))?,
        last_error: fields.get("last_error").cloned(),
    })
}

fn message_from(flat: Vec<String>) -> Result<OutboxMessage, StoreError> {
    let mut fields = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        fields.insert(k, v);
    }
    let e = entry_from(&fields)?;
    Ok(OutboxMessage {
        payload: Secret::new(fields.remove("payload").ok_or_else(|| corrupt("payload"))?),
        seq: fields.get("seq").map(|s| s.parse().map_err(|_| corrupt("seq"))).transpose()?,
        id: e.id,
        authorizer: e.authorizer,
        kind: e.kind,
        route: e.route,
        msg_type: e.msg_type,
        event: e.event,
        received_at_ms: e.received_at_ms,
        attempts: e.attempts,
        next_attempt_at_ms: e.next_attempt_at_ms,
        state: e.state,
        last_error: e.last_error,
    })
}

#[async_trait]
impl OutboxStore for RedisStore {
    async fn enqueue(&self, component: &AppId, m: &OutboxMessage) -> Result<(), StoreError> {
        let mut invocation = ENQUEUE.prepare_invoke();
        self.enqueue_args(&mut invocation, component, m);
        let _: i64 = self.outbox_invoke(invocation, true).await?;
        Ok(())
    }

    async fn enqueue_first(
        &self,
        component: &AppId,
        m: &OutboxMessage,
        key: &str,
        _now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = ENQUEUE_FIRST.key(self.seen_key(component, &m.dedupe_scope(component), key));
        invocation.arg(ttl.as_millis() as u64);
        self.enqueue_args(&mut invocation, component, m);
        let new: i64 = self.outbox_invoke(invocation, true).await?;
        Ok(new == 1)
    }

    async fn forget(&self, component: &AppId, authorizer: &AppId, key: &str) -> Result<(), StoreError> {
        let invocation = FORGET.key(self.seen_key(component, authorizer, key));
        let _: i64 = self.outbox_invoke(invocation, false).await?;
        Ok(())
    }

    async fn first_time(
        &self,
        component: &AppId,
        authorizer: &AppId,
        key: &str,
        _now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = FIRST_TIME.key(self.seen_key(component, authorizer, key));
        invocation.arg(ttl.as_millis() as u64);
        let new: i64 = self.outbox_invoke(invocation, true).await?;
        Ok(new == 1)
    }

    async fn due_routes(&self, component: &AppId, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut invocation = DUE_ROUTES.key(self.outbox_key(component, "outbox:routes"));
        invocation.arg(self.outbox_key(component, "outbox:due:")).arg(now_ms);
        self.outbox_invoke(invocation, false).await
    }

    async fn next_due(&self, component: &AppId) -> Result<Option<i64>, StoreError> {
        let mut invocation = NEXT_DUE.key(self.outbox_key(component, "outbox:routes"));
        invocation.arg(self.outbox_key(component, "outbox:due:"));
        let due: Option<String> = self.outbox_invoke(invocation, false).await?;
        due.map(|d| d.parse().map_err(|_| corrupt("next_attempt_at"))).transpose()
    }

    async fn claim(
        &self,
        component: &AppId,
        route: &str,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let token = format!("{}:{}", self.instance_name(), hex::encode(rand::random::<[u8; 8]>()));
        let mut invocation = CLAIM.key(self.outbox_key(component, &format!("outbox:due:{route}")));
        invocation
            .arg(now_ms)
            .arg(limit)
            .arg(now_ms + lease.as_millis() as i64)
            .arg(&token)
            .arg(self.outbox_key(component, "outbox:msg:"));
        let claimed: Vec<Vec<String>> = self.outbox_invoke(invocation, false).await?;
        claimed.into_iter().map(|flat| Ok(Claim { message: message_from(flat)?, token: token.clone() })).collect()
    }

    async fn settle(
        &self,
        component: &AppId,
        id: &DeliveryId,
        token: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let (kind, at_ms, error) = match outcome {
            Outcome::Delivered => ("delivered", 0, ""),
            Outcome::Retry { at_ms, error } => ("retry", *at_ms, error.as_str()),
            Outcome::Failed { error } => ("failed", 0, error.as_str()),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let settle = settles::Settle {
            keys: [
                self.msg_key(component, id),
                self.outbox_key(component, "outbox:pending"),
                self.outbox_key(component, "outbox:failed"),
            ],
            args: [
                token.to_owned(),
                kind.to_owned(),
                at_ms.to_string(),
                error.to_owned(),
                id.to_string(),
                self.outbox_key(component, "outbox:due:"),
            ],
            reply,
        };
        if let Err(settle) = self.settles.send(self, settle) {
            settles::run(self, vec![*settle]).await;
        }
        answer.await.map_err(|_| StoreError::Unavailable("the outbox's settles stopped".into()))?
    }

    async fn release_claims(&self, component: &AppId, now_ms: i64) -> Result<u64, StoreError> {
        let mut invocation = RELEASE_CLAIMS.key(self.outbox_key(component, "outbox:pending"));
        invocation
            .arg(now_ms)
            .arg(self.outbox_key(component, "outbox:msg:"))
            .arg(self.outbox_key(component, "outbox:due:"));
        self.outbox_invoke(invocation, false).await
    }

    async fn list(
        &self,
        component: &AppId,
        state: Option<OutboxState>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        if limit == 0 {
            let (pending, failed) = self.counts(component).await?;
            let total = match state {
                Some(OutboxState::Pending) => pending,
                Some(OutboxState::Failed) => failed,
                Some(OutboxState::Delivered) => 0,
                None => pending + failed,
            };
            return Ok((total, Vec::new()));
        }
        let sets: &[&str] = match state {
            Some(OutboxState::Pending) => &["outbox:pending"],
            Some(OutboxState::Failed) => &["outbox:failed"],
            Some(OutboxState::Delivered) => &[],
            None => &["outbox:pending", "outbox:failed"],
        };
        // From one set, the page itself; from both, each set's first offset+limit, merged.
        let (start, stop) = if sets.len() == 1 { (offset, offset + limit - 1) } else { (0, offset + limit - 1) };
        let (mut total, mut entries) = (0, Vec::new());
        for set in sets {
            let mut invocation = LIST.key(self.outbox_key(component, set));
            invocation.arg(start).arg(stop).arg(self.outbox_key(component, "outbox:msg:"));
            for field in ENTRY_FIELDS {
                invocation.arg(field);
            }
            let (count, rows): (String, Vec<Vec<Option<String>>>) = {
                let mut reply: Vec<redis::Value> = self.outbox_invoke(invocation, false).await?;
                if reply.is_empty() {
                    return Err(corrupt("listing"));
                }
                let count = redis::from_redis_value(&reply.remove(0)).map_err(|_| corrupt("listing"))?;
                let rows = reply
                    .iter()
                    .map(|row| redis::from_redis_value(row).map_err(|_| corrupt("listing")))
                    .collect::<Result<_, _>>()?;
                (count, rows)
            };
            total += count.parse::<u64>().map_err(|_| corrupt("listing"))?;
            for row in rows {
                let fields: HashMap<String, String> =
                    ENTRY_FIELDS.iter().zip(row).filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v))).collect();
                // Removed between the set's read and the hash's: skip it.
                if fields.contains_key("id") {
                    entries.push(entry_from(&fields)?);
                }
            }
        }
        if sets.len() > 1 {
            entries.sort_by(|a, b| (a.received_at_ms, &a.id).cmp(&(b.received_at_ms, &b.id)));
            entries = entries.into_iter().skip(offset).take(limit).collect();
        }
        Ok((total, entries))
    }

    async fn redeliver(&self, component: &AppId, id: &DeliveryId, now_ms: i64) -> Result<bool, StoreError> {
        let mut invocation = REDELIVER.key(self.msg_key(component, id));
        invocation
            .key(self.outbox_key(component, "outbox:pending"))
            .key(self.outbox_key(component, "outbox:failed"))
            .key(self.outbox_key(component, "outbox:routes"))
            .arg(now_ms)
            .arg(id.as_str())
            .arg(self.outbox_key(component, "outbox:due:"));
        let found: i64 = self.outbox_invoke(invocation, false).await?;
        Ok(found == 1)
    }

    async fn delete(&self, component: &AppId, id: &DeliveryId) -> Result<bool, StoreError> {
        let mut invocation = DELETE.key(self.msg_key(component, id));
        invocation
            .key(self.outbox_key(component, "outbox:pending"))
            .key(self.outbox_key(component, "outbox:failed"))
            .arg(id.as_str())
            .arg(self.outbox_key(component, "outbox:due:"));
        let found: i64 = self.outbox_invoke(invocation, false).await?;
        Ok(found == 1)
    }

    async fn counts(&self, component: &AppId) -> Result<(u64, u64), StoreError> {
        let mut invocation = COUNTS.key(self.outbox_key(component, "outbox:pending"));
        invocation.key(self.outbox_key(component, "outbox:failed"));
        self.outbox_invoke(invocation, false).await
    }

    async fn prune_seen(&self, _component: &AppId, _before_ms: i64) -> Result<u64, StoreError> {
        // Dedupe keys carry their own expiry (PX).
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
