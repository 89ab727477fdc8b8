//! The behaviour every backend must share; each backend's tests run these.
use super::*;

pub fn component() -> AppId {
    AppId::parse("wx0123456789abcdef").unwrap()
}

pub fn ticket(value: &str, create_time: i64) -> Ticket {
    Ticket { value: Secret::new(value), create_time, received_at: create_time + 1 }
}

pub fn event(info_type: &str, appid: &str, create_time: i64) -> AuthEvent {
    AuthEvent {
        info_type: info_type.into(),
        authorizer: AppId::parse(appid).ok(),
        create_time,
        payload: Secret::new(format!("<xml><InfoType>{info_type}</InfoType></xml>")),
        received_at: create_time,
    }
}

pub async fn newer_ticket_wins(store: &dyn Store) {
    let c = component();
    assert_eq!(store.load_ticket(&c).await.unwrap(), None);
    assert!(store.save_ticket(&c, &ticket("t-200", 200)).await.unwrap());
    assert!(!store.save_ticket(&c, &ticket("t-100", 100)).await.unwrap(), "an older push must not win");
    assert_eq!(store.load_ticket(&c).await.unwrap().unwrap().value.expose(), "t-200");
    assert!(store.save_ticket(&c, &ticket("t-300", 300)).await.unwrap());
    assert_eq!(store.load_ticket(&c).await.unwrap().unwrap(), ticket("t-300", 300));
    let other = AppId::parse("wxfedcba9876543210").unwrap();
    assert_eq!(store.load_ticket(&other).await.unwrap(), None, "tickets are kept per component");
}

pub fn authorizer(appid: &str, refresh: &str) -> AuthorizerRecord {
    AuthorizerRecord {
        appid: AppId::parse(appid).unwrap(),
        state: AuthorizerState::Active,
        refresh_token: Some(Secret::new(refresh)),
        access: Some(StoredAccess {
            value: Secret::new(format!("access-of-{appid}")),
            expires_at_ms: 1_700_000_000_000,
        }),
        authorized_at_ms: 1_690_000_000_000,
        last_refresh_at_ms: None,
        last_error: None,
        auth_code_sha1: None,
    }
}

pub async fn tokens_and_authorizers_round_trip(store: &dyn Store) {
    let c = component();
    assert_eq!(store.load_component_token(&c).await.unwrap(), None);
    let token = ComponentToken { value: Secret::new("ct"), expires_at: 2, obtained_at: 1 };
    store.save_component_token(&c, &token).await.unwrap();
    store.save_component_token(&c, &ComponentToken { value: Secret::new("ct2"), ..token.clone() }).await.unwrap();
    assert_eq!(store.load_component_token(&c).await.unwrap().unwrap().value.expose(), "ct2");

    let a = authorizer("wx1111111111111111", "refresh-1");
    store.save_authorizer(&c, &a).await.unwrap();
    let mut b = authorizer("wx2222222222222222", "refresh-2");
    b.state = AuthorizerState::NeedsReauth;
    b.access = None;
    b.last_error = Some("api_authorizer_token: errcode 61023".into());
    store.save_authorizer(&c, &b).await.unwrap();
    let rotated =
        AuthorizerRecord { refresh_token: Some(Secret::new("refresh-1b")), last_refresh_at_ms: Some(5), ..a.clone() };
    store.save_authorizer(&c, &rotated).await.unwrap();

    let all = store.load_authorizers(&c).await.unwrap();
    assert_eq!(all.len(), 2);
    let mut scanned = std::collections::BTreeMap::new();
    let mut cursor = ScanCursor::start();
    for _ in 0..10 {
        let page = store.scan_authorizers(&c, &cursor, 1).await.unwrap();
        scanned.extend(page.records.into_iter().map(|r| (r.appid, r)));
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(scanned.keys().copied().collect::<Vec<_>>(), [a.appid, b.appid], "a scan finds each once");
    assert_eq!(store.load_authorizer(&c, &a.appid).await.unwrap().unwrap(), rotated);
    assert_eq!(store.load_authorizer(&c, &b.appid).await.unwrap().unwrap(), b);
    assert!(store.delete_authorizer(&c, &a.appid).await.unwrap());
    assert!(!store.delete_authorizer(&c, &a.appid).await.unwrap());
    assert_eq!(store.load_authorizer(&c, &a.appid).await.unwrap(), None);
    assert!(store.load_authorizers(&component_b()).await.unwrap().is_empty(), "kept per component");
}

pub fn component_b() -> AppId {
    AppId::parse("wxfedcba9876543210").unwrap()
}

pub fn info(appid: &str, user_name: &str, status: i64) -> AuthorizerInfoRecord {
    AuthorizerInfoRecord {
        appid: AppId::parse(appid).unwrap(),
        nick_name: Some(format!("Account {appid}")),
        user_name: Some(user_name.into()),
        principal_name: Some("某某有限公司".into()),
        kind: AccountKind::OfficialAccount,
        account_status: Some(status),
        func_info: vec![1, 15, 17],
        fetched_at: 1_700_000_000_000,
    }
}

pub async fn authorizer_info_round_trips(store: &dyn Store) {
    let c = component();
    let a = info("wx1111111111111111", "gh_aaaaaaaaaaaa", 1);
    assert_eq!(store.load_authorizer_info(&c, &a.appid).await.unwrap(), None);
    store.save_authorizer_info(&c, &a).await.unwrap();
    let mut b = info("wx2222222222222222", "gh_bbbbbbbbbbbb", 19);
    b.kind = AccountKind::MiniProgram;
    b.nick_name = None;
    store.save_authorizer_info(&c, &b).await.unwrap();
    let frozen_then_normal = AuthorizerInfoRecord { account_status: Some(1), fetched_at: 9, ..b.clone() };
    store.save_authorizer_info(&c, &frozen_then_normal).await.unwrap();
    assert_eq!(store.load_authorizer_info(&c, &a.appid).await.unwrap(), Some(a.clone()));
    assert_eq!(store.load_authorizer_info(&c, &b.appid).await.unwrap(), Some(frozen_then_normal.clone()));
    let mut all = store.load_authorizer_infos(&c).await.unwrap();
    all.sort_by_key(|i| i.appid);
    assert_eq!(all, [a.clone(), frozen_then_normal]);
    assert_eq!(store.find_user_name(&c, "gh_bbbbbbbbbbbb").await.unwrap(), Some(b.appid));
    assert_eq!(store.find_user_name(&c, "gh_cccccccccccc").await.unwrap(), None);
    assert!(store.load_authorizer_infos(&component_b()).await.unwrap().is_empty(), "kept per component");
    assert_eq!(store.find_user_name(&component_b(), "gh_aaaaaaaaaaaa").await.unwrap(), None);
}

pub async fn js_tickets_round_trip(store: &dyn Store) {
    let (c, a) = (component(), AppId::parse("wx1111111111111111").unwrap());
    assert_eq!(store.load_js_ticket(&c, &a, TicketKind::Jsapi).await.unwrap(), None);
    let t = JsTicket { value: Secret::new("jt-1"), expires_at: 20, obtained_at: 10 };
    assert!(store.save_js_ticket(&c, &a, TicketKind::Jsapi, &t, Fence::Unfenced).await.unwrap());
    let t2 = JsTicket { value: Secret::new("jt-2"), ..t.clone() };
    assert!(store.save_js_ticket(&c, &a, TicketKind::Jsapi, &t2, Fence::Unfenced).await.unwrap());
    assert_eq!(store.load_js_ticket(&c, &a, TicketKind::Jsapi).await.unwrap(), Some(t2));
    assert_eq!(store.load_js_ticket(&c, &a, TicketKind::WxCard).await.unwrap(), None, "kept per kind");
}

pub async fn events_are_recorded_once(store: &dyn Store) {
    let c = component();
    let e = event("authorized", "wx1111111111111111", 10);
    assert!(store.record_event(&c, &e).await.unwrap());
    assert!(!store.record_event(&c, &e).await.unwrap(), "a retried push is a duplicate");
    assert!(store.record_event(&c, &event("unauthorized", "wx1111111111111111", 11)).await.unwrap());
    let pending = store.pending_events(&c).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].event, e);
    store.finish_event(&c, pending[0].id).await.unwrap();
    let pending = store.pending_events(&c).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event.info_type, "unauthorized");
}

/// Release jobs: created with their accounts, listed newest first, accounts written back, and a
/// verdict kept only while no newer one is held.
pub async fn release_jobs_round_trip(store: &dyn Store) {
    use super::releases::*;
    let (c, r) = (component(), store.releases());
    let job = |id: &str, at: i64| ReleaseJob {
        id: id.into(),
        state: JobState::Running,
        template_id: 42,
        user_version: "1.4.0".into(),
        user_desc: "spring".into(),
        ext_json: Some(serde_json::json!({"extAppid": "$APPID$"})),
        audit: None,
        release: ReleaseMode::Auto,
        concurrency: 10,
        max_failures: 10,
        reserve_audit_quota: 0,
        created_at_ms: at,
        release_requested_at_ms: None,
        counts: Default::default(),
        finished_at_ms: None,
    };
    let (a, b) = (AppId::parse("wx1111111111111111").unwrap(), AppId::parse("wx2222222222222222").unwrap());
    let accounts = [ReleaseAccount::new(b, AccountState::Pending, 1), ReleaseAccount::new(a, AccountState::Skipped, 1)];
    r.create_job(&c, &job("old", 1), &accounts).await.unwrap();
    r.create_job(&c, &job("new", 2), &accounts[..1]).await.unwrap();
    let ids: Vec<String> = r.jobs(&c).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(ids, ["new", "old"], "newest first");
    let held = r.accounts(&c, "old").await.unwrap();
    assert_eq!(held.iter().map(|a| a.appid).collect::<Vec<_>>(), [a, b], "by appid");
    let mut moved = held[1].clone();
    moved.state = AccountState::Auditing;
    moved.auditid = Some(7);
    r.save_accounts(&c, "old", &[moved.clone()]).await.unwrap();
    assert_eq!(r.accounts(&c, "old").await.unwrap()[1], moved);
    let mut paused = job("old", 1);
    paused.state = JobState::Paused;
    r.save_job(&c, &paused).await.unwrap();
    assert_eq!(r.job(&c, "old").await.unwrap(), Some(paused));
    assert_eq!(r.job(&c, "none").await.unwrap(), None);
    let verdict = |state, at_ms| AuditVerdict { state, reason: None, at_ms };
    r.record_verdict(&c, &b, &verdict(AccountState::Approved, 2_000)).await.unwrap();
    r.record_verdict(&c, &b, &verdict(AccountState::Delayed, 1_000)).await.unwrap();
    let held = r.verdicts(&c, &[a, b]).await.unwrap();
    assert_eq!(held, [(b, verdict(AccountState::Approved, 2_000))], "the older verdict is not kept");
}
