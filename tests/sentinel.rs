//! Redis behind Sentinel, over real processes: a master, a replica and three Sentinels on
//! loopback, two gateway instances on a `redis+sentinel://` URL. The master is failed over in
//! the middle of a run of refreshes: the gateway follows it, no authorizer is lost (the new
//! master holds the refresh token the sandbox accepts) and no client sees a token error.

mod common;

use common::redis_server::OwnRedis;
use common::*;
use redis::Commands;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wxgate::AppId;

const SERVICE: &str = "wxgate-test";

fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

fn replication(redis: &OwnRedis) -> HashMap<String, String> {
    let info: String = redis::cmd("INFO").arg("replication").query(&mut redis.conn()).unwrap_or_default();
    info.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Polls a blocking check every 50 ms, for at most `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// The port the Sentinel names master of the service.
fn master_port(sentinel: &OwnRedis) -> Option<u16> {
    let addr: Option<(String, String)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(SERVICE).query(&mut sentinel.conn()).ok()?;
    addr.and_then(|(_, port)| port.parse().ok())
}

/// Every Sentinel knows the replica and the two other Sentinels: a failover can be agreed.
fn sentinels_ready(sentinels: &[OwnRedis]) -> bool {
    sentinels.iter().all(|s| {
        let mut conn = s.conn();
        let replicas: Vec<HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("replicas").arg(SERVICE).query(&mut conn).unwrap_or_default();
        let peers: Vec<HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("sentinels").arg(SERVICE).query(&mut conn).unwrap_or_default();
        replicas.iter().any(|r| r.get("flags").is_some_and(|f| f == "slave")) && peers.len() == 2
    })
}

fn wait_calls(redis: &OwnRedis) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn call(gw: &Gateway, account: &AppId) -> serde_json::Value {
    let url = gw.proxy_url(&format!("/{account}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    match gw.http.get(url).send().await {
        Ok(r) => {
            r.json().await.unwrap_or_else(|e| serde_json::json!({ "errcode": "unreadable", "error": e.to_string() }))
        }
        Err(e) => serde_json::json!({ "errcode": "no answer", "error": e.to_string() }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_loses_no_authorizer_and_no_client_sees_a_token_error() {
    let master = OwnRedis::start();
    let replica = OwnRedis::replica_of(&master);
    wait_until(Duration::from_secs(10), "the replica is in sync", || {
        replication(&replica).get("master_link_status").is_some_and(|s| s == "up")
    });
    let sentinels: Vec<OwnRedis> = (0..3).map(|_| OwnRedis::sentinel(&master, SERVICE)).collect();
    wait_until(Duration::from_secs(30), "the Sentinels know the replica and each other", || {
        sentinels_ready(&sentinels)
    });
    let hosts: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let url = format!("redis+sentinel://{}/{SERVICE}/0", hosts.join(","));

    let prefix = format!("wxgate-sentinel-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut first = Setup::new();
    first.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\""));
    first.extra_toml = "\n[refresh]\nahead_secs = 60\n".into();
    // Tokens of 4 s: refreshed every ~3 s, so that refresh tokens rotate on both sides of the failover.
    let sandbox = first.sandbox(4).await;
    let setups = vec![first.sibling(), first];
    let mut gws = Vec::new();
    for s in &setups {
        gws.push(s.start().await);
    }
    ticket_delivered(&sandbox).await;
    let accounts = 3;
    for i in 1..=accounts {
        sandbox.authorize(&appid(i)).await.unwrap();
    }
    for gw in &gws {
        eventually(Duration::from_secs(15), "every instance knows every account", || async {
            let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
            list["total"] == accounts
        })
        .await;
    }

    let start = Instant::now();
    let mut failed_over_at = None;
    let mut n = 0usize;
    let mut errors = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        for i in 1..=accounts {
            let gw = &gws[n % gws.len()];
            n += 1;
            let answer = call(gw, &appid(i)).await;
            if answer["errcode"] != 0 {
                errors.push(format!("{:?} instance {}: {answer}", start.elapsed(), n % gws.len()));
            }
        }
        if failed_over_at.is_none() && start.elapsed() > Duration::from_secs(6) {
            let ok: String =
                redis::cmd("SENTINEL").arg("failover").arg(SERVICE).query(&mut sentinels[0].conn()).unwrap();
            assert_eq!(ok, "OK");
            failed_over_at = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A recovery starts with WeChat refusing a refresh token (61023); api_get_authorizer_info is
    // also called for every new account's info, so its count says nothing here.
    let refused_refresh_tokens = || sandbox.stats().errcodes.get(&61023).copied().unwrap_or(0);
    if !errors.is_empty() || refused_refresh_tokens() > 0 {
        for s in &setups {
            let log = s.log();
            let notable: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            eprintln!("---- instance log (warnings)\n{}", notable.join("\n"));
        }
    }
    assert!(errors.is_empty(), "client-visible errors ({} of {n} calls): {errors:#?}", errors.len());
    for s in &sentinels {
        assert_eq!(master_port(s), Some(replica.port), "every Sentinel names the former replica master");
    }
    assert_eq!(replication(&replica).get("role").map(String::as_str), Some("master"));

    // No authorizer lost: the new master holds the refresh token WeChat accepts now.
    let mut conn = replica.conn();
    for i in 1..=accounts {
        let a = appid(i);
        let key = format!("{prefix}{COMPONENT_APPID}:authorizer:{a}");
        let stored: Option<String> = conn.hget(&key, "refresh_token").unwrap();
        assert_eq!(stored, sandbox.refresh_token(&a), "{a}: the new master's refresh token");
    }
    // A refresh that lands in the moment between the promotion and the gateway noticing it is
    // written to the old master only, and lost with its demotion; the next refresh is refused
    // (61023) and recovers the refresh token through api_get_authorizer_info. Rare, never a loss.
    assert!(refused_refresh_tokens() <= 2, "recoveries: {}", refused_refresh_tokens());
    let stats = sandbox.stats();
    for gw in &gws {
        let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        let states: Vec<&serde_json::Value> =
            list["authorizers"].as_array().unwrap().iter().map(|a| &a["state"]).collect();
        assert!(states.iter().all(|s| *s == "active"), "every authorizer still active: {states:?}");
    }
    let refreshes: u64 = stats.authorizer_token_calls.values().sum();
    assert!(refreshes >= 3 * u64::from(accounts), "refresh tokens rotated during the run: {refreshes}");
    // Rotated refresh tokens were written with WAIT on both masters.
    let waits = (wait_calls(&master), wait_calls(&replica));
    assert!(waits.0 > 0 && waits.1 > 0, "WAIT after refresh-token writes on the old and the new master: {waits:?}");
    eprintln!(
        "sentinel figures: failover asked at {failed_over_at:?}, {n} calls, 0 errors, {refreshes} refreshes, \
         WAIT calls (old master, new master) {waits:?}, recoveries {}",
        stats.authorizer_info_calls
    );
    for s in &setups {
        let log = s.log();
        assert!(log.contains("Redis answers again"), "the instance reconnected to the new master");
        assert_no_secrets(&log, &[]);
    }
    drop(gws);
}
