//! The in-memory outbox: plain maps scanned on each call, for tests and throwaway runs.

use crate::store::outbox::{Claim, DeliveryId, OutboxEntry, OutboxMessage, OutboxState, OutboxStore, Outcome};
use crate::store::StoreError;
use crate::AppId;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct MemoryOutbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By (component, id); the claim token of a message in flight beside it.
    messages: BTreeMap<(AppId, DeliveryId), (OutboxMessage, Option<String>)>,
    /// (component, authorizer, key) → when it was recorded.
    seen: HashMap<(AppId, AppId, String), i64>,
    claims: u64,
}

impl MemoryOutbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the maps whole, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether an earlier message of `m`'s lane (route and authorizer) is still held.
    fn waits_in_lane(&self, component: &AppId, m: &OutboxMessage) -> bool {
        let Some(seq) = m.seq else { return false };
        self.messages.iter().any(|((c, _), (o, _))| {
            c == component && o.route == m.route && o.authorizer == m.authorizer && o.seq.is_some_and(|s| s < seq)
        })
    }
}

fn oldest_first(entries: &mut [OutboxEntry]) {
    entries.sort_by(|a, b| (a.received_at_ms, &a.id).cmp(&(b.received_at_ms, &b.id)));
}

#[async_trait]
impl OutboxStore for MemoryOutbox {
    async fn enqueue(&self, component: &AppId, message: &OutboxMessage) -> Result<(), StoreError> {
        self.state().messages.entry((*component, message.id.clone())).or_insert_with(|| (message.clone(), None));
        Ok(())
    }

    async fn first_time(
        &self,
        component: &AppId,
        authorizer: &AppId,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let slot = state.seen.entry((*component, *authorizer, key.to_owned())).or_insert(i64::MIN);
        let new = *slot <= now_ms - ttl.as_millis() as i64;
        if new {
            *slot = now_ms;
        }
        Ok(new)
    }

    async fn enqueue_first(
        &self,
        component: &AppId,
        message: &OutboxMessage,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // One lock for both: the key is recorded only with its message.
        let mut state = self.state();
        let slot = state.seen.entry((*component, message.dedupe_scope(component), key.to_owned())).or_insert(i64::MIN);
        if *slot > now_ms - ttl.as_millis() as i64 {
            return Ok(false);
        }
        *slot = now_ms;
        state.messages.entry((*component, message.id.clone())).or_insert_with(|| (message.clone(), None));
        Ok(true)
    }

    async fn forget(&self, component: &AppId, authorizer: &AppId, key: &str) -> Result<(), StoreError> {
        self.state().seen.remove(&(*component, *authorizer, key.to_owned()));
        Ok(())
    }

    async fn due_routes(&self, component: &AppId, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let state = self.state();
        let mut routes: Vec<String> = state
            .messages
            .iter()
            .filter(|((c, _), (m, _))| {
                c == component && m.state == OutboxState::Pending && m.next_attempt_at_ms <= now_ms
            })
            .map(|(_, (m, _))| m.route.clone())
            .collect();
        routes.sort();
        routes.dedup();
        Ok(routes)
    }

    async fn next_due(&self, component: &AppId) -> Result<Option<i64>, StoreError> {
        let state = self.state();
        Ok(state
            .messages
            .iter()
            .filter(|((c, _), (m, _))| c == component && m.state == OutboxState::Pending)
            .map(|(_, (m, _))| m.next_attempt_at_ms)
            .min())
    }

    async fn claim(
        &self,
        component: &AppId,
        route: &str,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut state = self.state();
        let mut due: Vec<(i64, DeliveryId)> = state
            .messages
            .iter()
            .filter(|((c, _), (m, _))| {
                c == component && m.route == route && m.state == OutboxState::Pending && m.next_attempt_at_ms <= now_ms
            })
            .filter(|((c, _), (m, _))| !state.waits_in_lane(c, m))
            .map(|((_, id), (m, _))| (m.next_attempt_at_ms, id.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        let mut claims = Vec::with_capacity(due.len());
        for (_, id) in due {
            state.claims += 1;
            let token = format!("memory:{}", state.claims);
            let (message, held) = state.messages.get_mut(&(*component, id)).expect("listed above");
            message.attempts += 1;
            message.next_attempt_at_ms = now_ms + lease.as_millis() as i64;
            *held = Some(token.clone());
            claims.push(Claim { message: message.clone(), token });
        }
        Ok(claims)
    }

    async fn settle(
        &self,
        component: &AppId,
        id: &DeliveryId,
        token: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let key = (*component, id.clone());
        let Some((message, held)) = state.messages.get_mut(&key) else { return Ok(false) };
        if held.as_deref() != Some(token) {
            return Ok(false);
        }
        *held = None;
        match outcome {
            Outcome::Delivered => {
                state.messages.remove(&key);
            }
            Outcome::Retry { at_ms, error } => {
                message.next_attempt_at_ms = *at_ms;
                message.last_error = Some(error.clone());
            }
            Outcome::Failed { error } => {
                message.state = OutboxState::Failed;
                message.last_error = Some(error.clone());
            }
        }
        Ok(true)
    }

    async fn release_claims(&self, component: &AppId, now_ms: i64) -> Result<u64, StoreError> {
        let mut released = 0;
        for ((c, _), (message, held)) in self.state().messages.iter_mut() {
            if c == component && held.take().is_some() {
                message.next_attempt_at_ms = now_ms;
                released += 1;
            }
        }
        Ok(released)
    }

    async fn list(
        &self,
        component: &AppId,
        state: Option<OutboxState>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        let held = self.state();
        let mut entries: Vec<OutboxEntry> = held
            .messages
            .iter()
            .filter(|((c, _), (m, _))| c == component && state.is_none_or(|s| m.state == s))
            .map(|(_, (m, _))| m.entry())
            .collect();
        oldest_first(&mut entries);
        let total = entries.len() as u64;
        Ok((total, entries.into_iter().skip(offset).take(limit).collect()))
    }

    async fn redeliver(&self, component: &AppId, id: &DeliveryId, now_ms: i64) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some((message, held)) = state.messages.get_mut(&(*component, id.clone())) else { return Ok(false) };
        message.state = OutboxState::Pending;
        message.next_attempt_at_ms = now_ms;
        *held = None;
        Ok(true)
    }

    async fn delete(&self, component: &AppId, id: &DeliveryId) -> Result<bool, StoreError> {
        Ok(self.state().messages.remove(&(*component, id.clone())).is_some())
    }

    async fn counts(&self, component: &AppId) -> Result<(u64, u64), StoreError> {
        let state = self.state();
        let mut counts = (0, 0);
        for ((c, _), (m, _)) in &state.messages {
            match m.state {
                _ if c != component => {}
                OutboxState::Pending => counts.0 += 1,
                OutboxState::Failed => counts.1 += 1,
                OutboxState::Delivered => {}
            }
        }
        Ok(counts)
    }

    async fn prune_seen(&self, component: &AppId, before_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.state();
        let before = state.seen.len();
        state.seen.retain(|(c, _, _), at| c != component || *at >= before_ms);
        Ok((before - state.seen.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::contract_tests;

    #[tokio::test]
    async fn claims_settle_and_fence() {
        contract_tests::claims_settle_and_fence(&MemoryOutbox::default()).await;
    }

    #[tokio::test]
    async fn lists_redelivers_and_deletes() {
        contract_tests::lists_redelivers_and_deletes(&MemoryOutbox::default()).await;
    }

    #[tokio::test]
    async fn enqueue_first_takes_each_key_once() {
        contract_tests::enqueue_first_takes_each_key_once(&MemoryOutbox::default()).await;
    }

    #[tokio::test]
    async fn lanes_keep_their_order() {
        contract_tests::lanes_keep_their_order(&MemoryOutbox::default()).await;
    }

    #[tokio::test]
    async fn dedupe_keys_expire() {
        let store = MemoryOutbox::default();
        contract_tests::dedupe_keys_expire(&store).await;
        assert!(store.state().seen.is_empty(), "pruned");
    }
}
