//! A Redis outage under load, over real processes: two gateway instances on one Redis of the
//! test's own, Redis killed for 15 s while pushes, `/readyz` and proxied calls keep coming, then
//! started again. Nothing waits on the missing Redis: pushes get 503 at once, `/readyz` says
//! why, no call is held longer than the upstream timeout, and both instances serve store
//! operations again within seconds of Redis answering.
//!
//! Every ticket the load pushes is older than the sandbox's: it goes through the store without
//! replacing the ticket the gateway needs.

mod common;

use common::redis_server::OwnRedis;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

/// `upstream.timeout_ms` in [`Setup`]'s config.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(3000);
const OUTAGE: Duration = Duration::from_secs(15);

fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Push,
    Ready,
    Call,
}

#[derive(Debug, Clone)]
struct Sample {
    instance: usize,
    kind: Kind,
    /// When it was sent, from the start of the load.
    at: Duration,
    took: Duration,
    status: u16,
    ok: bool,
    body: String,
}

/// Two instances on `redis`, a sandbox pushing to the first, a ticket and `accounts` authorized.
async fn two_instances(redis: &OwnRedis, lifetime: u64, accounts: u32) -> (Vec<Setup>, Sandbox, Vec<Gateway>) {
    let mut first = Setup::new();
    let prefix = format!("wxgate-outage-{}:", hex::encode(rand::random::<[u8; 6]>()));
    first.store_toml =
        Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"", redis.url()));
    // No reconciliation behind the test's back: its api_get_authorizer_info calls would blur the
    // count of refresh-token recoveries.
    first.extra_toml = "\n[refresh]\nahead_secs = 60\nreconcile_hours = 0\n".into();
    let sandbox = first.sandbox(lifetime).await;
    let setups = vec![first.sibling(), first];
    let mut gws = Vec::new();
    for s in &setups {
        gws.push(s.start().await);
    }
    ticket_delivered(&sandbox).await;
    for i in 1..=accounts {
        sandbox.authorize(&appid(i)).await.unwrap();
    }
    for gw in &gws {
        eventually(Duration::from_secs(15), "every instance knows every account and is ready", || async {
            let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
            let known = list["total"] == accounts;
            known && gw.http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    // Every authorization is followed by one fetch of the account's info (the authorizing
    // instance's): those are done before the test counts recoveries.
    eventually(Duration::from_secs(15), "the accounts' info fetched once each", || async {
        sandbox.stats().authorizer_info_calls >= u64::from(accounts)
    })
    .await;
    (setups, sandbox, gws)
}

/// Status and body; status 0 for no answer within the client's 10 s.
async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, format!("no answer: {e}")),
    }
}

/// One instance's load until `stop`: a ticket push, `/readyz` and a proxied call, over and over.
async fn load(i: usize, gw: Arc<Gateway>, start: Instant, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Sample> {
    let crypt = crypt();
    let mut samples = Vec::new();
    let mut n = 0i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        // A ticket older than the sandbox's: it goes through the store (which keeps the newer
        // one) and is answered `success`, without replacing the ticket the gateway needs.
        let at = start.elapsed();
        let r = gw.try_push(&crypt, &ticket_xml(&format!("ticket-{i}-{n}"), n)).await;
        let (status, body) = answer(r).await;
        samples.push(Sample {
            instance: i,
            kind: Kind::Push,
            at,
            took: start.elapsed() - at,
            status,
            ok: body == "success",
            body,
        });

        let at = start.elapsed();
        let (status, body) = answer(gw.http.get(gw.admin_url("/readyz")).send().await).await;
        samples.push(Sample {
            instance: i,
            kind: Kind::Ready,
            at,
            took: start.elapsed() - at,
            status,
            ok: status == 200,
            body,
        });

        let at = start.elapsed();
        let account = appid(1 + (n as u32 % 2));
        let url = gw.proxy_url(&format!("/{account}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
        let (status, body) = answer(gw.http.get(url).send().await).await;
        let ok = serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["errcode"] == 0);
        samples.push(Sample { instance: i, kind: Kind::Call, at, took: start.elapsed() - at, status, ok, body });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_answered_at_once_and_recovered_within_seconds() {
    let mut redis = OwnRedis::start();
    // Tokens of 6 s: they expire during the outage, and are refreshed only once Redis is back.
    let (setups, sandbox, gws) = two_instances(&redis, 6, 2).await;
    let gws: Vec<Arc<Gateway>> = gws.into_iter().map(Arc::new).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> =
        gws.iter().enumerate().map(|(i, gw)| tokio::spawn(load(i, Arc::clone(gw), start, Arc::clone(&stop)))).collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sandbox.stats();
    let down_at = start.elapsed();
    redis.kill();
    tokio::time::sleep(OUTAGE).await;
    let during = sandbox.stats();
    redis.spawn(); // returns once the new Redis answers PING
    let back_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut samples: Vec<Sample> = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }

    let slowest = samples.iter().max_by_key(|s| s.took).unwrap();
    assert!(slowest.took < UPSTREAM_TIMEOUT, "held longer than the upstream timeout: {slowest:?}");
    let outage: Vec<&Sample> = samples.iter().filter(|s| s.at > down_at && s.at + s.took < back_at).collect();
    let slowest_of = |kind: Kind| outage.iter().filter(|s| s.kind == kind).map(|s| s.took).max().unwrap_or_default();
    for s in outage.iter().filter(|s| s.kind != Kind::Call) {
        assert_eq!(s.status, 503, "during the outage: {s:?}");
        assert!(s.took < Duration::from_secs(1), "answered within a second during the outage: {s:?}");
    }
    for s in outage.iter().filter(|s| s.kind == Kind::Ready) {
        assert!(s.body.contains("store (redis)"), "/readyz says why: {s:?}");
    }
    assert!(outage.iter().filter(|s| s.kind == Kind::Push).count() >= 20, "pushes kept coming during the outage");

    // Recovery: from the first answer of the new Redis to the first push each instance stored,
    // after which every push and every /readyz succeeds.
    let mut recovered = Vec::new();
    for i in 0..gws.len() {
        let after: Vec<&Sample> =
            samples.iter().filter(|s| s.instance == i && s.at >= back_at && s.kind != Kind::Call).collect();
        // `/readyz` may still wait a moment on a component token that expired during the outage:
        // only its store answer counts here.
        let store_ok = |s: &Sample| s.ok || (s.kind == Kind::Ready && !s.body.contains("store ("));
        let first_ok = after.iter().position(|s| store_ok(s)).unwrap_or_else(|| panic!("instance {i} never recovered"));
        let failed_later: Vec<&&Sample> = after[first_ok..].iter().filter(|s| !store_ok(s)).collect();
        assert!(failed_later.is_empty(), "instance {i} failed again after recovering: {failed_later:?}");
        let took = after[first_ok].at + after[first_ok].took - back_at;
        assert!(
            took < Duration::from_secs(5),
            "instance {i} served store operations again {took:?} after Redis answered"
        );
        recovered.push(took);
        let last_ready = after.iter().rev().find(|s| s.kind == Kind::Ready).unwrap();
        assert!(last_ready.ok, "instance {i} ready again: {last_ready:?}");
    }
    // Proxied calls: tokens that expired during the outage are refreshed once Redis is back.
    for i in 0..gws.len() {
        let late: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.instance == i && s.kind == Kind::Call && s.at > back_at + Duration::from_secs(5))
            .collect();
        assert!(!late.is_empty() && late.iter().all(|s| s.ok), "instance {i}: calls after recovery: {late:?}");
    }
    // An admin refresh goes through on both.
    for gw in &gws {
        let r = gw
            .http
            .post(gw.admin_url(&format!("/admin/authorizers/{}/refresh", appid(1))))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let after = sandbox.stats();
    eprintln!(
        "outage figures: push answered within {:?}, /readyz within {:?}, calls within {:?} during the outage; \
         recovered {recovered:?} after Redis answered; slowest answer overall {:?}; \
         api_component_token calls during the outage {}, api_authorizer_token calls during the outage {}, \
         api_get_authorizer_info calls for recoveries {}",
        slowest_of(Kind::Push),
        slowest_of(Kind::Ready),
        slowest_of(Kind::Call),
        slowest.took,
        during.component_token_calls - before.component_token_calls,
        during.authorizer_token_calls.values().sum::<u64>() - before.authorizer_token_calls.values().sum::<u64>(),
        after.authorizer_info_calls - before.authorizer_info_calls,
    );
    assert_eq!(after.authorizer_info_calls - before.authorizer_info_calls, 0, "no refresh token was lost");
    for s in &setups {
        assert_no_secrets(&s.log(), &[]);
    }
}

/// A Redis that stops answering without closing its connections (SIGSTOP: a hung host, a full
/// network queue): the first command waits out its deadline (`store.redis_timeout_ms`, 1 s), and
/// every one after fails at once until Redis answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_redis_costs_one_deadline_then_fails_fast() {
    let redis = OwnRedis::start();
    let (_setups, _sandbox, gws) = two_instances(&redis, 7200, 1).await;
    let pid = redis.pid().unwrap().to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    let crypt = crypt();
    let gw = &gws[0];
    signal("-STOP");
    let started = Instant::now();
    let mut answers = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        let at = Instant::now();
        let status = gw.try_push(&crypt, &ticket_xml("old-ticket", 1)).await.map(|r| r.status().as_u16()).unwrap_or(0);
        answers.push((status, at.elapsed()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = Instant::now();
    let ready = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    let ready_took = at.elapsed();
    let (ready_status, ready_body) = (ready.status(), ready.text().await.unwrap());
    signal("-CONT");
    let resumed = Instant::now();
    eventually(Duration::from_secs(5), "a push is stored again", || async {
        gw.try_push(&crypt, &ticket_xml("old-ticket", 1)).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let recovered = resumed.elapsed();

    assert!(answers.iter().all(|(status, _)| *status == 503), "every push during the silence: 503: {answers:?}");
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    assert!(slowest < Duration::from_millis(1500), "no push waited much past the 1 s deadline: {answers:?}");
    let waited = answers.iter().filter(|(_, took)| *took > Duration::from_millis(500)).count();
    assert!(waited <= 2, "after the first deadline, pushes fail at once: {answers:?}");
    assert_eq!(ready_status, 503);
    assert!(ready_took < Duration::from_secs(1), "/readyz answered in {ready_took:?}");
    assert!(ready_body.contains("redis unreachable"), "{ready_body}");
    assert!(recovered < Duration::from_secs(5));
    eprintln!(
        "silent Redis: first push {:?}, slowest {slowest:?}, {} pushes in 4 s, /readyz {ready_took:?}, \
         stored again {recovered:?} after SIGCONT",
        answers[0].1,
        answers.len()
    );
}
