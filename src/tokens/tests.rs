//! The token service's logic against a scripted WeChat, with tokio's clock paused so that
//! lifetimes of hours pass in milliseconds.

use super::testing::*;
use super::*;
use crate::store::{AuthEvent, AuthorizerState, Store};
use crate::Secret;
use std::sync::atomic::Ordering;

#[tokio::test(start_paused = true)]
async fn many_concurrent_waiters_cause_one_refresh() {
    let h = started_with(1).await;
    assert_eq!(h.api.with(|f| f.component_calls), 1);
    let old = h.tokens.authorizers().token(&appid(1)).await.unwrap();
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let (tokens, old) = (Arc::clone(&h.tokens), old.value.clone());
            tokio::spawn(async move { tokens.authorizers().replace(&appid(1), &old).await.unwrap() })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for w in waiters {
        seen.insert(w.await.unwrap().value.expose().to_owned());
    }
    assert_eq!(seen.len(), 1, "every waiter got the one new token");
    assert!(!seen.contains(old.value.expose()));
    assert_eq!(h.api.with(|f| f.authorizer_calls[&appid(1)]), 2, "the import, then one refresh for 200 waiters");
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_keeps_the_current_token_until_it_expires() {
    let h = started_with(1).await;
    let held = h.tokens.authorizers().token(&appid(1)).await.unwrap();
    h.api.with(|f| f.fail_errcode = Some(-1));
    // Past the planned refresh, short of expiry: refreshes fail, the held token still serves.
    tokio::time::sleep(Duration::from_secs(LIFETIME - 30)).await;
    assert_eq!(h.tokens.authorizers().token(&appid(1)).await.unwrap(), held);
    let calls = h.api.with(|f| f.authorizer_calls[&appid(1)]);
    assert!(calls >= 3, "retried with backoff, {calls} calls");
    let status = h.tokens.authorizers().status(&appid(1)).unwrap();
    assert!(status.last_error.unwrap().contains("-1"));
    // Once it has expired there is nothing to serve.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(matches!(h.tokens.authorizers().token(&appid(1)).await, Err(TokenError::Wechat(_))));
    // WeChat recovers: so does the token, without anyone asking.
    h.api.with(|f| f.fail_errcode = None);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let fresh = h.tokens.authorizers().token(&appid(1)).await.unwrap();
    assert_ne!(fresh, held);
    assert!(h.tokens.authorizers().status(&appid(1)).unwrap().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_is_stored_before_the_new_access_token_is_used() {
    let h = started_with(1).await;
    h.api.with(|f| f.rotate = true);
    let before = h.tokens.authorizers().token(&appid(1)).await.unwrap();

    // The store cannot take the rotated token: the new access token must not be used.
    h.store.fail_authorizer_saves.store(true, Ordering::SeqCst);
    assert!(h.tokens.authorizers().refresh_now(&appid(1)).await.is_err());
    assert_eq!(h.tokens.authorizers().token(&appid(1)).await.unwrap(), before);
    h.store.fail_authorizer_saves.store(false, Ordering::SeqCst);

    // WeChat rotated the refresh token in that failed attempt; the store still has the old one,
    // which WeChat now refuses (61023). Recovery finds the current one.
    h.api.with(|f| f.info_knows_refresh = true);
    h.tokens.authorizers().refresh_now(&appid(1)).await.unwrap();
    let stored = h.store.load_authorizer(&component(), &appid(1)).await.unwrap().unwrap();
    assert_eq!(stored.refresh_token.unwrap().expose(), h.api.with(|f| f.refresh[&appid(1)].clone()));

    // A crash now: a new process loads the store and refreshes with what it finds there.
    let api = Arc::clone(&h.api);
    drop(h.tokens);
    let again = start(api, h.store.clone()).await;
    again.tokens.authorizers().refresh_now(&appid(1)).await.unwrap();
    assert_eq!(again.tokens.authorizers().status(&appid(1)).unwrap().state, "active");
}

#[tokio::test(start_paused = true)]
async fn an_unrecoverable_refresh_token_needs_reauthorization() {
    let h = started_with(1).await;
    h.api.with(|f| f.refresh.insert(appid(1), "changed-elsewhere".into()));
    assert!(matches!(h.tokens.authorizers().refresh_now(&appid(1)).await, Err(TokenError::NeedsReauth)));
    let status = h.tokens.authorizers().status(&appid(1)).unwrap();
    assert_eq!(status.state, "needs_reauth");
    assert!(status.last_error.unwrap().contains("61023"));
    let stored = h.store.load_authorizer(&component(), &appid(1)).await.unwrap().unwrap();
    assert_eq!(stored.state, AuthorizerState::NeedsReauth);
    assert!(stored.refresh_token.is_some(), "the refresh token is kept: it may still be recovered");
}

#[tokio::test(start_paused = true)]
async fn unauthorized_revokes_unless_the_owner_came_back_later() {
    let h = started_with(0).await;
    h.api.with(|f| f.codes.insert("code-1".into(), appid(7)));
    assert_eq!(h.tokens.grants().authorize("code-1").await.unwrap(), appid(7));
    // The same code again (the push after the redirect) is harmless, and not sent to WeChat.
    assert_eq!(h.tokens.grants().authorize("code-1").await.unwrap(), appid(7));
    assert_eq!(h.api.with(|f| f.query_auth_calls), 1);

    let push = |info: &str, at: i64| AuthEvent {
        info_type: info.into(),
        authorizer: Some(appid(7)),
        create_time: at,
        payload: Secret::new(format!("<xml><InfoType>{info}</InfoType></xml>")),
        received_at: at,
    };
    let now_secs = h.tokens.clock().now_ms() / 1000;
    h.tokens.events().accept(push("unauthorized", now_secs - 3600)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.tokens.authorizers().token(&appid(7)).await.is_ok(), "an old unauthorized push changes nothing");

    h.tokens.events().accept(push("unauthorized", now_secs + 5)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(h.tokens.authorizers().token(&appid(7)).await, Err(TokenError::Revoked)));
    let stored = h.store.load_authorizer(&component(), &appid(7)).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.refresh_token), (AuthorizerState::Revoked, None));
    assert!(h.store.pending_events(&component()).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_refreshes_about_once_per_lifetime_and_never_lets_a_token_expire() {
    let n = 40;
    let h = started_with(n).await;
    let lifetimes = 10;
    for _ in 0..lifetimes * 12 {
        tokio::time::sleep(Duration::from_secs(LIFETIME / 12)).await;
        let now = h.tokens.clock().now_ms();
        for i in 1..=n {
            let (_, token) = h.tokens.authorizers.slots.get(&appid(i)).unwrap().access();
            assert!(token.unwrap().is_valid(now), "authorizer {i} expired");
        }
        assert!(h.tokens.component.slot.is_valid(now));
    }
    for i in 1..=n {
        let calls = h.api.with(|f| f.authorizer_calls[&appid(i)]) - 1;
        assert!(
            (lifetimes as u32..=lifetimes as u32 * 13 / 10).contains(&calls),
            "authorizer {i}: {calls} refreshes in {lifetimes} lifetimes"
        );
    }
    let component_calls = h.api.with(|f| f.component_calls) - 1;
    assert!((lifetimes..=lifetimes * 13 / 10).contains(&(component_calls as u64)), "{component_calls}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_ticket_pusher_is_asked_to_resume_every_few_minutes() {
    let h = started_with(0).await;
    tokio::time::sleep(Duration::from_secs(19 * 60)).await;
    assert_eq!(h.api.with(|f| f.push_requests), 0);
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    assert_eq!(h.api.with(|f| f.push_requests), 1);
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    assert_eq!(h.api.with(|f| f.push_requests), 1, "not more often than every 5 minutes");
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    assert_eq!(h.api.with(|f| f.push_requests), 2);
    push_ticket(&h, "ticket-2").await;
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.api.with(|f| f.push_requests), 2, "pushes resumed");
}

#[tokio::test(start_paused = true)]
async fn without_a_ticket_there_is_no_component_token_and_readiness_says_why() {
    let h = start(FakeApi::new(), Arc::default()).await;
    assert!(matches!(h.tokens.component().token().await, Err(TokenError::NoTicket)));
    assert!(h.tokens.not_ready_reason().await.unwrap().contains("ticket"));
    push_ticket(&h, "ticket-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.tokens.not_ready_reason().await, None);
    assert_eq!(h.api.with(|f| f.component_calls), 1, "the ticket led to a token at once");
}

#[tokio::test(start_paused = true)]
async fn the_search_finds_held_authorizers_by_appid_or_name_and_not_once_they_are_gone() {
    let h = started_with(2).await;
    // No name known yet (this WeChat names no one): found by the appid alone.
    assert_eq!(h.tokens.info().search("0000000000000001"), [appid(1)]);
    assert_eq!(h.tokens.info().search("wx"), [appid(1), appid(2)]);
    h.api.with(|f| f.nick_names.insert(appid(2), "咖啡 Corner".into()));
    h.tokens.info().fetch(&appid(2)).await.unwrap();
    assert_eq!(h.tokens.info().search("咖啡 c"), [appid(2)]);
    assert!(h.tokens.forget_authorizer(&appid(1)).await.unwrap());
    assert_eq!(h.tokens.info().search("wx"), [appid(2)]);

    // A new process finds the names in the store; the info the store keeps of an authorizer it
    // no longer holds is no answer.
    let api = Arc::clone(&h.api);
    drop(h.tokens);
    let again = start(api, h.store.clone()).await;
    assert_eq!(again.tokens.info().search("corner"), [appid(2)]);
    assert_eq!(again.tokens.info().search("wx"), [appid(2)]);
    assert!(again.store.load_authorizer_info(&component(), &appid(1)).await.unwrap().is_some());
}
