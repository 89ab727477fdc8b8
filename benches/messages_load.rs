//! The deliver-mode load run: `cargo bench --bench messages_load` (release build).
//!
//! Starts the release `wxgate` binary with the outbox on SQLite (WAL, `synchronous=FULL`) and
//! one `deliver` route to a local handler (in this process), then pushes RATE messages/s
//! (default 2000) for DURATION seconds (default 10) to `/wxgate/callback/$APPID$`, sealed and
//! signed as WeChat does, open loop (each push at its scheduled time, latency measured from
//! that time, so a stall counts for every push it delays). Prints the latency from push to
//! `success` (p50, p99, max), then waits until the handler has every message and the outbox is
//! empty, and checks that none was lost or delivered twice.
//!
//! Targets: none lost, p99 push → `success` < 50 ms. Environment: RATE, DURATION, KEEP=1 (keep
//! the work dir and print its path).

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

const COMPONENT: &str = "wx0123456789abcdef";
const TOKEN: &str = "pamtest";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const SHOP: &str = "wx1111111111111111";
const TARGET_P99_MS: f64 = 50.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let passed = rt.block_on(run());
    std::process::exit(if passed { 0 } else { 1 });
}

async fn run() -> bool {
    let rate = env_or("RATE", 2000);
    let duration = env_or("DURATION", 10);
    let total = rate * duration;

    // The handler: records each MsgId once per request, answers at once.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler_seen = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/wechat",
        axum::routing::post(move |body: String| {
            let seen = Arc::clone(&handler_seen);
            async move {
                let id = body.split("<MsgId>").nth(1).and_then(|r| r.split("</MsgId>").next()).unwrap_or("");
                seen.lock().unwrap().push(id.to_owned());
                "success"
            }
        }),
    );
    let handler = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler_addr = handler.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(handler, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        r#"
[component]
appid = "{COMPONENT}"
appsecret = "appsecret-0123456789abcdef0123456"
token = "{TOKEN}"
encoding_aes_key = "{AES_KEY}"

[upstream]
base_url = "http://127.0.0.1:9"
mp_base_url = "http://127.0.0.1:9"

[listen]
proxy = "{proxy}"
admin = "{admin}"
public_base_url = "http://{proxy}"

[store]
backend = "sqlite"
path = "{db}"

[admin]
token = "{ADMIN_TOKEN}"

[server]
threads = 1
shutdown_grace_secs = 0

[proxy]
access_log = false

[[messages.routes]]
name = "shop"
authorizers = ["{SHOP}"]
url = "http://{handler_addr}/wechat"
token = "handlertoken42"
mode = "deliver"
"#,
        db = dir.path().join("wxgate.sqlite3").display(),
    );
    let config_path = dir.path().join("wxgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("wxgate.log")).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_wxgate"))
        .arg("--config")
        .arg(&config_path)
        .env("WXGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the wxgate binary");
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(512).build().unwrap();
    let started = Instant::now();
    while http.get(format!("http://{admin}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "wxgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every push sealed beforehand, so that the load generator's own work is small.
    let crypt = MsgCrypt::new(&Secret::new(TOKEN), &Secret::new(AES_KEY), COMPONENT).unwrap();
    let pushes: Vec<(String, String)> = (1..=total)
        .map(|msg_id| {
            let xml = format!(
                "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>\
                 <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content>\
                 <MsgId>{msg_id}</MsgId></xml>"
            );
            let nonce = format!("n{msg_id}");
            let sealed = crypt.seal(&xml, "1700000000", &nonce);
            let url = format!(
                "http://{proxy}/wxgate/callback/{SHOP}?signature=x&timestamp=1700000000&nonce={nonce}&openid=o_user&encrypt_type=aes&msg_signature={}",
                sealed.msg_signature
            );
            let body = format!("<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>", sealed.encrypt);
            (url, body)
        })
        .collect();

    println!("pushing {rate} messages/s for {duration} s ({total} messages), deliver mode, outbox on SQLite");
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let failures: Arc<Mutex<u64>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let begin = tokio::time::Instant::now();
    for (i, (url, body)) in pushes.into_iter().enumerate() {
        let at = begin + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        let (http, latencies, failures) = (http.clone(), Arc::clone(&latencies), Arc::clone(&failures));
        tasks.spawn(async move {
            let answer = match http.post(url).body(body).send().await {
                Ok(r) if r.status() == 200 => r.text().await.ok(),
                _ => None,
            };
            if answer.as_deref() == Some("success") {
                latencies.lock().unwrap().push(at.elapsed().as_secs_f64() * 1000.0);
            } else {
                *failures.lock().unwrap() += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let pushed_in = begin.elapsed().as_secs_f64();

    let drain_started = Instant::now();
    let outbox_empty = || async {
        let r = http.get(format!("http://{admin}/admin/messages?limit=0")).bearer_auth(ADMIN_TOKEN).send().await;
        match r {
            Ok(r) => r.json::<serde_json::Value>().await.map(|v| v["total"] == 0).unwrap_or(false),
            Err(_) => false,
        }
    };
    while !(seen.lock().unwrap().iter().collect::<HashSet<_>>().len() as u64 == total && outbox_empty().await) {
        if drain_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = drain_started.elapsed().as_secs_f64();
    let _ = gateway.kill();
    let _ = gateway.wait();

    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| if l.is_empty() { f64::NAN } else { l[((l.len() as f64 * p) as usize).min(l.len() - 1)] };
    let seen = seen.lock().unwrap().clone();
    let distinct: HashSet<&String> = seen.iter().collect();
    let (p50, p99, max) = (pct(0.50), pct(0.99), l.last().copied().unwrap_or(f64::NAN));
    let failures = *failures.lock().unwrap();
    println!("pushed in {pushed_in:.2} s: {} answered success, {failures} not", l.len());
    println!("push -> success: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (target p99 < {TARGET_P99_MS} ms)");
    println!(
        "delivered: {} of {total} messages ({} requests, {} repeated) within {drained_in:.2} s after the last push",
        distinct.len(),
        seen.len(),
        seen.len() - distinct.len()
    );
    if std::env::var_os("KEEP").is_some() {
        println!("work dir kept: {}", dir.keep().display());
    }
    let passed = failures == 0 && distinct.len() as u64 == total && p99 < TARGET_P99_MS;
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}
