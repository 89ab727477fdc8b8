//! Several gateway instances on one Redis: one refresher per token, shared state, nothing lost
//! when an instance or Redis itself goes away.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxgate::sandbox::{Faults, Sandbox};
use wxgate::AppId;

fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

fn redis_store(url: &str, prefix: &str) -> String {
    format!("[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"")
}

fn unique_prefix() -> String {
    format!("wxgate-cluster-{}:", hex::encode(rand::random::<[u8; 6]>()))
}

async fn clean(url: &str, prefix: &str) {
    use redis::AsyncCommands;
    if let Ok(mut conn) = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await {
        let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = conn.del(keys).await;
        }
    }
}

/// Every token and refresh token the instances stored under `prefix`.
async fn stored_tokens(url: &str, prefix: &str) -> Vec<String> {
    use redis::AsyncCommands;
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys(format!("{prefix}*authorizer:*")).await.unwrap();
    let mut tokens = Vec::new();
    for key in keys.iter().chain(std::iter::once(&format!("{prefix}{COMPONENT_APPID}:component_token"))) {
        let fields: std::collections::HashMap<String, String> = conn.hgetall(key).await.unwrap();
        tokens.extend(["access_token", "refresh_token", "value"].iter().filter_map(|f| fields.get(*f).cloned()));
    }
    tokens
}

async fn active_count(gw: &Gateway) -> usize {
    let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
    list["authorizers"].as_array().unwrap().iter().filter(|a| a["state"] == "active").count()
}

/// `n` instances on one Redis under a fresh prefix, a sandbox pushing to the first, a ticket,
/// and `accounts` authorized; every instance knows them all.
async fn cluster(
    n: usize,
    redis_url: &str,
    lifetime: u64,
    accounts: u32,
    extra: &str,
) -> (Vec<Setup>, Sandbox, Vec<Gateway>, String) {
    let prefix = unique_prefix();
    let mut first = Setup::new();
    first.store_toml = Some(redis_store(redis_url, &prefix));
    first.extra_toml = format!("\n[refresh]\nahead_secs = 60\n{extra}");
    let sandbox = first.sandbox(lifetime).await;
    let mut setups = vec![first];
    for _ in 1..n {
        setups.push(setups[0].sibling());
    }
    let mut gws = Vec::new();
    for s in &setups {
        gws.push(s.start().await);
    }
    ticket_delivered(&sandbox).await;
    for i in 1..=accounts {
        sandbox.authorize(&appid(i)).await.unwrap();
    }
    for gw in &gws {
        eventually(Duration::from_secs(15), "every instance knows every account", || async {
            active_count(gw).await == accounts as usize
        })
        .await;
    }
    (setups, sandbox, gws, prefix)
}

async fn call(gw: &Gateway, account: &AppId) -> serde_json::Value {
    let url = gw.proxy_url(&format!("/{account}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    gw.http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_refresh_each_token_once_per_lifetime_and_no_client_sees_a_token_error() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let lifetime = 4;
    let accounts = 6;
    let (setups, sandbox, gws, prefix) = cluster(3, URL, lifetime, accounts, "").await;
    let before = sandbox.stats();
    let start = Instant::now();
    let run = Duration::from_secs(lifetime * 5);
    let mut n = 0usize;
    while start.elapsed() < run {
        for i in 1..=accounts {
            let gw = &gws[n % gws.len()];
            n += 1;
            let answer = call(gw, &appid(i)).await;
            assert_eq!(answer["errcode"], 0, "instance {} at {:?}: {answer}", n % gws.len(), start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = sandbox.stats();
    let elapsed = start.elapsed().as_millis() as u64;
    // One instance alone refreshes a 4 s token every 2.75–3 s (1 s ahead, up to 0.25 s jitter):
    // about 7 in 20 s. Three instances refreshing independently would make three times that.
    let most = elapsed / 2750 + 2;
    for i in 1..=accounts {
        let a = appid(i);
        let refreshes = after.authorizer_token_calls.get(&*a.as_str()).copied().unwrap_or(0)
            - before.authorizer_token_calls.get(&*a.as_str()).copied().unwrap_or(0);
        assert!(
            (most - 3..=most).contains(&refreshes),
            "{a}: {refreshes} refreshes in {run:?} (one refresher: at most {most})"
        );
    }
    let component = after.component_token_calls - before.component_token_calls;
    assert!(component <= most, "component token: {component} refreshes");
    if after.errcodes.contains_key(&61023) {
        for s in &setups {
            let log = s.log();
            let notable: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            eprintln!("---- instance log (warnings)\n{}", notable.join("\n"));
        }
    }
    assert_eq!(after.errcodes.get(&61023), None, "no refresh token was ever lost");
    let tokens = stored_tokens(URL, &prefix).await;
    assert!(tokens.len() > accounts as usize);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for s in &setups {
        assert_no_secrets(&s.log(), &tokens);
    }
    clean(URL, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lease_holder_is_taken_over_within_the_lease_time() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    // timeout 2 s: a lease lasts 2 + 5 = 7 s.
    let (setups, sandbox, mut gws, prefix) = cluster(2, URL, 7200, 1, "").await;
    let account = appid(1);
    sandbox.set_faults(Faults {
        delay: Duration::from_secs(2),
        path_contains: Some("api_authorizer_token".into()),
        ..Faults::default()
    });
    let holder = gws[0]
        .http
        .post(gws[0].admin_url(&format!("/admin/authorizers/{account}/refresh")))
        .bearer_auth(ADMIN_TOKEN)
        .send();
    let _ = tokio::time::timeout(Duration::from_millis(700), holder).await;
    gws[0].kill(); // while it holds the lease and waits on WeChat
    sandbox.set_faults(Faults::default());

    let started = Instant::now();
    let r = gws[1]
        .http
        .post(gws[1].admin_url(&format!("/admin/authorizers/{account}/refresh")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(took < Duration::from_secs(9), "took over within the lease time: {took:?}");
    assert_eq!(call(&gws[1], &account).await["errcode"], 0);
    // Whatever WeChat rotated, the store holds the refresh token it now accepts.
    let mut conn = redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let stored: String = redis::AsyncCommands::hget(
        &mut conn,
        format!("{prefix}{COMPONENT_APPID}:authorizer:{account}"),
        "refresh_token",
    )
    .await
    .unwrap();
    assert_eq!(Some(stored), sandbox.refresh_token(&account));
    drop(setups);
    clean(URL, &prefix).await;
}

/// A Redis of the test's own, with AOF, so that it can be killed and restarted on its port.
struct OwnRedis {
    child: Option<Child>,
    port: PortClaim,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> Self {
        let mut redis = OwnRedis { child: None, port: claim_port(), dir: tempfile::tempdir().unwrap() };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.port.to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis::Client::open(self.url())
                .unwrap()
                .get_connection()
                .is_ok_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_ride_out_a_redis_restart() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let (setups, sandbox, gws, _prefix) = cluster(2, &url, 7200, 2, "").await;

    redis.kill();
    // Tokens are served from memory while Redis is away.
    for gw in &gws {
        assert_eq!(call(gw, &appid(1)).await["errcode"], 0);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.spawn();

    // A new authorization after the restart reaches both: the store and the change channel are back.
    eventually(Duration::from_secs(20), "the new account is stored", || async {
        sandbox.authorize(&appid(3)).await.is_ok()
    })
    .await;
    for (i, gw) in gws.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while active_count(gw).await != 3 {
            if Instant::now() > deadline {
                for s in &setups {
                    eprintln!(
                        "---- log\n{}",
                        s.log()
                            .lines()
                            .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                panic!("instance {i} does not know the new account");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for gw in &gws {
        let r = gw
            .http
            .post(gw.admin_url(&format!("/admin/authorizers/{}/refresh", appid(2))))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        for i in 1..=3 {
            assert_eq!(call(gw, &appid(i)).await["errcode"], 0);
        }
    }
    for s in &setups {
        assert_no_secrets(&s.log(), &[]);
    }
}
