//! Test support for the token service: a scripted WeChat, a store whose failures can be
//! switched on, and a harness that starts the service with its scheduler.

use super::*;
use crate::store::{
    unix_now, AuthEvent, AuthorizerInfoRecord, AuthorizerRecord, ComponentToken, Fence, Lease, MemoryStore, Store,
    StoredEvent, Ticket,
};
use crate::wechat::{ApiErrorKind, Authorization, AuthorizerInfo, AuthorizerTokens, Issued, ListedAuthorizer};
use crate::Secret;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) const LIFETIME: u64 = 7200;

pub(super) fn component() -> AppId {
    AppId::parse("wx0123456789abcdef").unwrap()
}

pub(super) fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

/// A WeChat that answers like the real one where the token service cares: the last ticket,
/// the latest refresh token, tokens that expire.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) issued: u64,
    pub(super) ticket: Option<String>,
    pub(super) component_calls: u32,
    pub(super) authorizer_calls: HashMap<AppId, u32>,
    pub(super) refresh: HashMap<AppId, String>,
    pub(super) rotate: bool,
    pub(super) fail_errcode: Option<i64>,
    /// What api_get_authorizer_info reports as the refresh token.
    pub(super) info_knows_refresh: bool,
    pub(super) codes: HashMap<String, AppId>,
    pub(super) query_auth_calls: u32,
    pub(super) push_requests: u32,
    /// What api_component_token answers instead of a token.
    pub(super) component_errcode: Option<i64>,
    /// Calls to a token endpoint that have arrived, answered or not.
    pub(super) started: u32,
    pub(super) ticket_calls: u32,
    /// What getticket answers instead of a ticket.
    pub(super) ticket_errcode: Option<i64>,
    /// What api_get_authorizer_info names each account (none unless set).
    pub(super) nick_names: HashMap<AppId, String>,
}

/// One WeChat's state, possibly seen by several instances through FakeApis of their own.
pub(super) struct FakeApi {
    state: Arc<std::sync::Mutex<Fake>>,
    /// How long each call takes, in milliseconds.
    delay_ms: std::sync::atomic::AtomicU64,
}

impl FakeApi {
    pub(super) fn new() -> Arc<Self> {
        Self::with_delay(Duration::from_millis(50))
    }

    pub(super) fn with_delay(delay: Duration) -> Arc<Self> {
        Arc::new(Self { state: Default::default(), delay_ms: (delay.as_millis() as u64).into() })
    }

    /// The same WeChat, answering after `delay`: another instance's view of it.
    pub(super) fn sharing(&self, delay: Duration) -> Arc<Self> {
        Arc::new(Self { state: Arc::clone(&self.state), delay_ms: (delay.as_millis() as u64).into() })
    }

    pub(super) fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    async fn take_time(&self) {
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

pub(super) fn api_error(errcode: i64) -> WechatError {
    WechatError::Api { endpoint: "fake", errcode, errmsg: "scripted".into(), kind: ApiErrorKind::of(errcode) }
}

impl Fake {
    fn token(&mut self, what: &str) -> Issued {
        self.issued += 1;
        Issued { value: Secret::new(format!("{what}-{}", self.issued)), expires_in: LIFETIME }
    }
}

#[async_trait]
impl ComponentApi for FakeApi {
    async fn component_token(&self, ticket: &Secret) -> Result<Issued, WechatError> {
        self.with(|f| f.started += 1);
        self.take_time().await;
        self.with(|f| {
            f.component_calls += 1;
            if let Some(code) = f.component_errcode {
                return Err(api_error(code));
            }
            if f.ticket.as_deref() != Some(ticket.expose()) {
                return Err(api_error(61006));
            }
            Ok(f.token("component"))
        })
    }

    async fn create_preauthcode(&self, _: &Secret) -> Result<Issued, WechatError> {
        Ok(self.with(|f| f.token("preauthcode")))
    }

    async fn query_auth(&self, _: &Secret, code: &str) -> Result<Authorization, WechatError> {
        self.take_time().await;
        self.with(|f| {
            f.query_auth_calls += 1;
            let appid = f.codes.remove(code).ok_or_else(|| api_error(61009))?;
            let refresh = format!("refresh-{}", f.issued);
            f.refresh.insert(appid, refresh.clone());
            Ok(Authorization {
                authorizer_appid: appid,
                access_token: f.token("access"),
                refresh_token: Secret::new(refresh),
                func_info: vec![],
            })
        })
    }

    async fn authorizer_token(
        &self,
        _: &Secret,
        authorizer: &AppId,
        refresh_token: &Secret,
    ) -> Result<AuthorizerTokens, WechatError> {
        self.with(|f| f.started += 1);
        self.take_time().await;
        self.with(|f| {
            *f.authorizer_calls.entry(*authorizer).or_default() += 1;
            if let Some(code) = f.fail_errcode {
                return Err(api_error(code));
            }
            if f.refresh.get(authorizer).map(String::as_str) != Some(refresh_token.expose()) {
                return Err(api_error(61023));
            }
            let access_token = f.token("access");
            if f.rotate {
                f.refresh.insert(*authorizer, format!("refresh-{}", f.issued));
            }
            Ok(AuthorizerTokens { access_token, refresh_token: Secret::new(f.refresh[authorizer].clone()) })
        })
    }

    async fn authorizer_info(&self, _: &Secret, authorizer: &AppId) -> Result<AuthorizerInfo, WechatError> {
        self.with(|f| {
            let refresh_token = f.refresh.get(authorizer).filter(|_| f.info_knows_refresh).cloned().map(Secret::new);
            let nick_name = f.nick_names.get(authorizer).cloned();
            Ok(AuthorizerInfo { refresh_token, nick_name, ..AuthorizerInfo::default() })
        })
    }

    async fn authorizer_list(&self, _: &Secret, _: u32, _: u32) -> Result<(u64, Vec<ListedAuthorizer>), WechatError> {
        Ok((0, vec![]))
    }

    async fn js_ticket(&self, _: &Secret, kind: &'static str) -> Result<Issued, WechatError> {
        self.with(|f| f.started += 1);
        self.take_time().await;
        self.with(|f| {
            f.ticket_calls += 1;
            match f.ticket_errcode {
                Some(code) => Err(api_error(code)),
                None => Ok(f.token(kind)),
            }
        })
    }

    async fn start_push_ticket(&self) -> Result<(), WechatError> {
        self.with(|f| f.push_requests += 1);
        Ok(())
    }
}

/// A store whose writes of authorizers can be made to fail, as a full disk would.
/// A store whose operations can be made to fail, as a full disk or a broken Redis would; over
/// memory unless given another, and shared (leases, re-reads) if told so.
pub(super) struct FlakyStore {
    pub(super) inner: SharedStore,
    pub(super) shared: bool,
    /// Saves of authorizers fail (a full disk).
    pub(super) fail_authorizer_saves: AtomicBool,
    /// Every write fails, reads work (Redis refusing writes: MISCONF, OOM, a read-only replica).
    pub(super) refuse_writes: AtomicBool,
    /// Leases cannot be taken.
    pub(super) refuse_leases: AtomicBool,
    /// Fenced writes find their lease taken by another instance.
    pub(super) lose_leases: AtomicBool,
}

impl Default for FlakyStore {
    fn default() -> Self {
        Self::over(Arc::new(MemoryStore::new()), false)
    }
}

impl FlakyStore {
    pub(super) fn over(inner: SharedStore, shared: bool) -> Self {
        Self {
            inner,
            shared,
            fail_authorizer_saves: AtomicBool::new(false),
            refuse_writes: AtomicBool::new(false),
            refuse_leases: AtomicBool::new(false),
            lose_leases: AtomicBool::new(false),
        }
    }

    /// A write fails if writes are refused, or if `also` is set.
    fn check(&self, also: Option<&AtomicBool>) -> Result<(), StoreError> {
        if also.is_some_and(|f| f.load(Ordering::SeqCst)) || self.refuse_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("scripted refusal".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FlakyStore {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    fn releases(&self) -> &dyn crate::store::ReleaseStore {
        self.inner.releases()
    }

    fn outbox(&self) -> &dyn crate::store::OutboxStore {
        self.inner.outbox()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn load_ticket(&self, c: &AppId) -> Result<Option<Ticket>, StoreError> {
        self.inner.load_ticket(c).await
    }
    async fn save_ticket(&self, c: &AppId, t: &Ticket) -> Result<bool, StoreError> {
        self.inner.save_ticket(c, t).await
    }
    async fn record_event(&self, c: &AppId, e: &AuthEvent) -> Result<bool, StoreError> {
        self.inner.record_event(c, e).await
    }
    async fn pending_events(&self, c: &AppId) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.pending_events(c).await
    }
    async fn finish_event(&self, c: &AppId, id: i64) -> Result<(), StoreError> {
        self.inner.finish_event(c, id).await
    }
    async fn load_component_token(&self, c: &AppId) -> Result<Option<ComponentToken>, StoreError> {
        self.inner.load_component_token(c).await
    }
    async fn save_component_token(&self, c: &AppId, t: &ComponentToken) -> Result<(), StoreError> {
        self.check(None)?;
        self.inner.save_component_token(c, t).await
    }
    async fn load_authorizers(&self, c: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        self.inner.load_authorizers(c).await
    }
    async fn load_authorizer(&self, c: &AppId, a: &AppId) -> Result<Option<AuthorizerRecord>, StoreError> {
        self.inner.load_authorizer(c, a).await
    }
    async fn save_authorizer(&self, c: &AppId, r: &AuthorizerRecord) -> Result<(), StoreError> {
        self.check(Some(&self.fail_authorizer_saves))?;
        self.inner.save_authorizer(c, r).await
    }
    async fn delete_authorizer(&self, c: &AppId, a: &AppId) -> Result<bool, StoreError> {
        self.inner.delete_authorizer(c, a).await
    }
    async fn save_authorizer_info(&self, c: &AppId, i: &AuthorizerInfoRecord) -> Result<(), StoreError> {
        self.inner.save_authorizer_info(c, i).await
    }
    async fn load_authorizer_info(&self, c: &AppId, a: &AppId) -> Result<Option<AuthorizerInfoRecord>, StoreError> {
        self.inner.load_authorizer_info(c, a).await
    }
    async fn load_authorizer_infos(&self, c: &AppId) -> Result<Vec<AuthorizerInfoRecord>, StoreError> {
        self.inner.load_authorizer_infos(c).await
    }
    async fn find_user_name(&self, c: &AppId, u: &str) -> Result<Option<AppId>, StoreError> {
        self.inner.find_user_name(c, u).await
    }
    async fn load_js_ticket(
        &self,
        c: &AppId,
        a: &AppId,
        kind: crate::store::TicketKind,
    ) -> Result<Option<crate::store::JsTicket>, StoreError> {
        self.inner.load_js_ticket(c, a, kind).await
    }
    async fn save_js_ticket(
        &self,
        c: &AppId,
        a: &AppId,
        kind: crate::store::TicketKind,
        t: &crate::store::JsTicket,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.check(None)?;
        if self.lose_leases.load(Ordering::SeqCst) && fence.lease().is_some() {
            return Ok(false);
        }
        self.inner.save_js_ticket(c, a, kind, t, fence).await
    }
    async fn save_component_token_leased(
        &self,
        c: &AppId,
        t: &ComponentToken,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.check(None)?;
        if self.lose_leases.load(Ordering::SeqCst) && fence.lease().is_some() {
            return Ok(false);
        }
        self.inner.save_component_token_leased(c, t, fence).await
    }
    async fn save_authorizer_leased(
        &self,
        c: &AppId,
        r: &AuthorizerRecord,
        fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.check(Some(&self.fail_authorizer_saves))?;
        if self.lose_leases.load(Ordering::SeqCst) && fence.lease().is_some() {
            return Ok(false);
        }
        self.inner.save_authorizer_leased(c, r, fence).await
    }
}

#[async_trait]
impl crate::store::Coordination for FlakyStore {
    fn shared(&self) -> bool {
        self.shared
    }

    async fn lease(&self, c: &AppId, what: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        self.check(Some(&self.refuse_leases))?;
        self.inner.lease(c, what, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }
}

pub(super) struct Harness {
    pub(super) api: Arc<FakeApi>,
    pub(super) store: Arc<FlakyStore>,
    pub(super) tokens: Arc<TokenService>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

pub(super) async fn start(api: Arc<FakeApi>, store: Arc<FlakyStore>) -> Harness {
    start_with(api, store, Settings::new(Duration::from_secs(600))).await
}

pub(super) async fn start_with(api: Arc<FakeApi>, store: Arc<FlakyStore>, settings: Settings) -> Harness {
    let tokens = TokenService::load(component(), store.clone(), api.clone(), settings).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(Arc::clone(&tokens).run_scheduler(rx));
    Harness { api, store, tokens, _shutdown: tx }
}

/// A harness whose component token is held and with `n` authorizers imported.
pub(super) async fn started_with(n: u32) -> Harness {
    let h = start(FakeApi::new(), Arc::default()).await;
    push_ticket(&h, "ticket-1").await;
    for i in 1..=n {
        import(&h, i).await;
    }
    h
}

/// Authorizer `i` imported, with a refresh token WeChat knows.
pub(super) async fn import(h: &Harness, i: u32) {
    h.api.with(|f| f.refresh.insert(appid(i), format!("initial-{i}")));
    h.tokens.grants().import(&appid(i), Secret::new(format!("initial-{i}"))).await.unwrap();
}

pub(super) async fn push_ticket(h: &Harness, value: &str) {
    h.api.with(|f| f.ticket = Some(value.into()));
    let now = unix_now();
    h.tokens
        .component()
        .accept_ticket(Ticket { value: Secret::new(value), create_time: now, received_at: now })
        .await
        .unwrap();
}
