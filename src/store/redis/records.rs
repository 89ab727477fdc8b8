//! The records' part of the Redis store: the `Store` trait over hashes, sets and the scripts,
//! and how a record is written to and read from its hash.

use super::*;

fn field<T: std::str::FromStr>(map: &HashMap<String, String>, name: &str) -> Result<T, StoreError> {
    map.get(name).and_then(|v| v.parse().ok()).ok_or_else(|| StoreError::Corrupt(format!("field {name}")))
}

fn authorizer_fields(r: &AuthorizerRecord) -> Vec<(&'static str, String)> {
    let (access_token, access_expires_at, last_refresh_at) = r.stored_columns();
    let mut fields = vec![
        ("state", r.state.as_str().to_owned()),
        ("access_expires_at", access_expires_at.to_string()),
        ("authorized_at", r.authorized_at_ms.to_string()),
        ("last_refresh_at", last_refresh_at.to_string()),
    ];
    let optional = [
        ("refresh_token", r.refresh_token.as_ref().map(|s| s.expose().to_owned())),
        ("access_token", access_token.map(str::to_owned)),
        ("last_error", r.last_error.clone()),
        ("auth_code_sha1", r.auth_code_sha1.clone()),
    ];
    fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    fields
}

/// An authorizer record's fields, in the order [`authorizer_from_row`] reads them.
pub(super) const RECORD_FIELDS: [&str; 8] = [
    "state",
    "refresh_token",
    "access_token",
    "access_expires_at",
    "authorized_at",
    "last_refresh_at",
    "last_error",
    "auth_code_sha1",
];

/// A record from the values of [`RECORD_FIELDS`]; `None` when the hash does not exist.
pub(super) fn authorizer_from_row(
    appid: &AppId,
    row: Vec<Option<String>>,
) -> Result<Option<AuthorizerRecord>, StoreError> {
    let Ok([state, refresh_token, access_token, access_expires_at, authorized_at, last_refresh_at, last_error, sha1]) =
        <[Option<String>; 8]>::try_from(row)
    else {
        return Err(StoreError::Corrupt("an HMGET answer of the wrong length".into()));
    };
    let Some(state) = state else { return Ok(None) };
    let number = |value: Option<String>, name: &str| {
        value.and_then(|v| v.parse().ok()).ok_or_else(|| StoreError::Corrupt(format!("field {name}")))
    };
    let (access, last_refresh_at_ms) = AuthorizerRecord::from_columns(
        access_token,
        number(access_expires_at, "access_expires_at")?,
        number(last_refresh_at, "last_refresh_at")?,
    );
    Ok(Some(AuthorizerRecord {
        appid: *appid,
        state: AuthorizerState::parse(&state).ok_or_else(|| StoreError::Corrupt("field state".into()))?,
        refresh_token: refresh_token.map(Secret::new),
        access,
        authorized_at_ms: number(authorized_at, "authorized_at")?,
        last_refresh_at_ms,
        last_error,
        auth_code_sha1: sha1,
    }))
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

    fn releases(&self) -> &dyn crate::store::ReleaseStore {
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
        let authorizer = crate::store::appid_or_empty(e.authorizer);
        let dedupe = format!("{}|{}|{}", e.info_type, authorizer, e.create_time);
        let mut invocation = RECORD_EVENT.key(self.key(component, "events:dedupe"));
        invocation.key(self.key(component, "events:seq")).key(self.key(component, "events:pending"));
        invocation.arg(dedupe).arg(self.key(component, "event:")).arg(&e.info_type).arg(authorizer);
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
                    authorizer: map.get("authorizer_appid").and_then(|a| AppId::parse(a).ok()),
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
            Versioned::No,
            "component",
            component_fields(token),
        )
        .await
        .map(drop)
    }

    /// Page by page (SSCAN and a pipeline each), never one round trip per authorizer.
    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let mut all = HashMap::new();
        let mut cursor = crate::store::ScanCursor::start();
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
        cursor: &crate::store::ScanCursor,
        limit: usize,
    ) -> Result<crate::store::ScanPage, StoreError> {
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
        Ok(crate::store::ScanPage { records, next: (next != 0).then(|| crate::store::ScanCursor(next.to_string())) })
    }

    async fn load_authorizer(&self, component: &AppId, appid: &AppId) -> Result<Option<AuthorizerRecord>, StoreError> {
        Ok(self.load_many(component, std::slice::from_ref(appid)).await?.pop())
    }

    async fn save_authorizer(&self, component: &AppId, r: &AuthorizerRecord) -> Result<(), StoreError> {
        let hash = self.key(component, &format!("authorizer:{}", r.appid));
        self.fenced_write(
            component,
            None,
            &hash,
            Versioned::Authorizer(&r.appid.as_str()),
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
        invocation.key(self.key(component, "changes")).arg(&*appid.as_str());
        let n: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(n > 0)
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
            Versioned::No,
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
            Versioned::Authorizer(&r.appid.as_str()),
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
        self.fenced_write(c, fence.lease(), &self.key(c, &name), Versioned::Change(&name), &name, fields).await
    }

    /// One hash of documents (`infos`, appid → JSON) and one index (`user_names`, gh → appid),
    /// written together.
    async fn save_authorizer_info(&self, component: &AppId, info: &AuthorizerInfoRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.key(component, "infos"), &*info.appid.as_str(), info.to_json().to_string()).ignore();
        if let Some(user_name) = &info.user_name {
            pipe.hset(self.key(component, "user_names"), user_name, &*info.appid.as_str()).ignore();
        }
        self.link.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    async fn load_authorizer_info(
        &self,
        component: &AppId,
        appid: &AppId,
    ) -> Result<Option<AuthorizerInfoRecord>, StoreError> {
        let doc = self.hget(&self.key(component, "infos"), &appid.as_str()).await?;
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

#[async_trait]
impl crate::store::Coordination for RedisStore {
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
                let owner = format!("{instance}:{fence}");
                let taken: Option<String> =
                    redis::cmd("SET").arg(&key).arg(&owner).arg("NX").arg("PX").arg(ttl_ms).query_async(&mut c).await?;
                Ok(taken.map(|_| Lease { key, owner: Some(owner) }))
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut invocation = RELEASE.key(&lease.key);
        invocation.arg(lease.owner.as_deref().unwrap_or(""));
        let _: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(())
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    fn quota(&self) -> Option<&dyn crate::store::quota::SharedQuota> {
        Some(self)
    }
}

fn info_from(appid: &AppId, doc: &str) -> Result<AuthorizerInfoRecord, StoreError> {
    serde_json::from_str(doc)
        .ok()
        .and_then(|v| AuthorizerInfoRecord::from_json(*appid, &v))
        .ok_or_else(|| StoreError::Corrupt(format!("info of {appid}")))
}
