//! Following one component's change channel: what other instances wrote, announced over
//! pub/sub, and after every reconnect a catch-up with what was written while unsubscribed.

use super::link::WeakLink;
use super::{RedisOptions, RedisStore, CATCH_UP_ATTEMPTS};
use crate::store::{Change, StoreError, TicketKind};
use crate::AppId;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::broadcast;

/// Follows one component's change channel on a connection of its own to the master in use,
/// subscribing again after every reconnect of the store's link (a Redis restart, a failover).
/// It holds the link weakly: the follower ends with the store.
pub(super) struct Follower {
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
    pub(super) fn new(store: &RedisStore, component: AppId, heard: u64) -> Self {
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
            settles: Default::default(),
        })
    }

    /// Runs while the store lives. After every (re)subscription it catches up with what was
    /// written meanwhile, since announcements made while unsubscribed are lost.
    pub(super) async fn listen(mut self) {
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
            Ok(Some(delta)) => {
                let _ = tx.send(Change::Ticket);
                let _ = tx.send(Change::ComponentToken);
                for batch in delta.authorizers {
                    let _ = tx.send(Change::Authorizers(batch));
                }
                for appid in delta.deleted {
                    let _ = tx.send(Change::Deleted(appid));
                }
                for (appid, kind) in delta.js_tickets {
                    let _ = tx.send(Change::JsTicket(appid, kind));
                }
                self.heard = delta.version;
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

    pub(super) async fn changed_since(&self) -> Result<Option<super::Delta>, StoreError> {
        let store = self.store().ok_or_else(|| StoreError::Unavailable("redis: the store is gone".into()))?;
        store.changed_since(&self.component, self.heard).await
    }
}

/// A change and, for authorizers, its version (`authorizer:{appid}@{version}`).
pub(super) fn parse_change(payload: &str) -> Option<(Change, Option<u64>)> {
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
