//! Bursts of pushes on the message URL: `cargo bench --bench messages_load` (release build).
//!
//! Starts the release `wxgate` binary with one `deliver` route to a handler in this process and
//! the outbox on STORE (`sqlite`, the default, or `redis`: the server at 127.0.0.1:6379), then
//! pushes RATE messages/s (default 10,000) until TOTAL (default 1,000,000) from CONNS
//! keep-alive connections (default 256), sealed and signed as WeChat does, open loop (see
//! `pusher.rs`). Reports the latency from each push's slot to its answer, how many were
//! answered `success` and how many refused (503), the gateway's RSS growth and CPU, then waits
//! until the handler has every message answered `success` and the outbox is empty.
//!
//! Targets: none answered `success` lost, none delivered twice, every push answered within 1 s;
//! without refusals p99 < 50 ms; the outbox drained within 30 s of the last push; RSS growth
//! < 100 MB. Past the gateway's capacity (RATE=40000, say) refusals are expected, and the
//! other targets hold. Environment: STORE, RATE, TOTAL, CONNS, THREADS (the gateway's
//! `server.threads`, default 1), KEEP=1 (keep the work dir and print its path).

#[path = "messages_load/gateway.rs"]
mod gateway;
#[path = "messages_load/pusher.rs"]
mod pusher;

use gateway::{Gateway, StoreKind, AES_KEY, COMPONENT, SHOP, TOKEN};
use pusher::{Answer, Load};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

const TARGET_P99_MS: f64 = 50.0;
const TARGET_MAX_MS: f64 = 1000.0;
const TARGET_DRAIN_S: f64 = 30.0;
const TARGET_RSS_MB: f64 = 100.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let passed = rt.block_on(run());
    std::process::exit(if passed { 0 } else { 1 });
}

fn message(n: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content>\
         <MsgId>{n}</MsgId></xml>"
    )
}

/// The handler, on a thread and runtime of its own: counts each MsgId's deliveries.
fn handler(total: u64) -> (SocketAddr, Arc<Vec<AtomicU8>>) {
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    let counts = Arc::clone(&seen);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/wechat",
                axum::routing::post(move |body: String| {
                    let id = body.split("<MsgId>").nth(1).and_then(|r| r.split("</MsgId>").next());
                    if let Some(n) = id.and_then(|i| i.parse::<usize>().ok()).filter(|n| *n < counts.len()) {
                        counts[n].fetch_add(1, Ordering::Relaxed);
                    }
                    async { "success" }
                }),
            );
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (addr, seen)
}

async fn run() -> bool {
    let store = match std::env::var("STORE").as_deref() {
        Ok("redis") => StoreKind::Redis,
        _ => StoreKind::Sqlite,
    };
    let (rate, total, conns) = (env_or("RATE", 10_000), env_or("TOTAL", 1_000_000), env_or("CONNS", 256) as usize);
    let (handler_addr, seen) = handler(total);
    let gw = Gateway::start(store, env_or("THREADS", 1), handler_addr).await;
    let (rss_before, cpu_before) = (gw.memory_mb("VmRSS"), gw.cpu_secs());
    println!("pushing {total} messages at {rate}/s from {conns} connections, deliver mode, outbox on {store:?}");
    let load = Load {
        target: gw.proxy,
        path: format!("/wxgate/callback/{SHOP}"),
        crypt: MsgCrypt::new(&Secret::new(TOKEN), &Secret::new(AES_KEY), COMPONENT).unwrap(),
        rate,
        total,
        conns,
        message,
    };
    let began = Instant::now();
    let results = load.run().await;
    let pushed_in = began.elapsed().as_secs_f64();
    let (rss_after, cpu_push) = (gw.memory_mb("VmRSS"), gw.cpu_secs() - cpu_before);
    // What the drain has left when the pushes end: tells a slow drain from a late one.
    let backlog = gw.outbox_total().await.unwrap_or(0);

    let success: Vec<usize> = (0..total as usize).filter(|&i| results.answers[i] == Answer::Success).collect();
    let refused = results.answers.iter().filter(|a| **a == Answer::Refused).count();
    let failed = results.answers.iter().filter(|a| **a == Answer::Failed).count();
    let drain_started = Instant::now();
    let all_in = || success.iter().all(|&i| seen[i].load(Ordering::Relaxed) > 0);
    loop {
        if all_in() && gw.outbox_total().await == Some(0) {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(180) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = drain_started.elapsed().as_secs_f64();
    let rss_peak = gw.memory_mb("VmHWM");
    let lost = success.iter().filter(|&&i| seen[i].load(Ordering::Relaxed) == 0).count();
    let twice = seen.iter().filter(|c| c.load(Ordering::Relaxed) > 1).count();
    let refused_delivered =
        (0..total as usize).filter(|&i| results.answers[i] != Answer::Success && seen[i].load(Ordering::Relaxed) > 0);
    let refused_delivered = refused_delivered.count();

    let mut all = results.latency_us.clone();
    all.sort_unstable();
    let mut ok: Vec<u32> = success.iter().map(|&i| results.latency_us[i]).collect();
    ok.sort_unstable();
    let pct = |l: &[u32], p: f64| match l.len() {
        0 => f64::NAN,
        n => l[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0,
    };
    let (p50, p99, max) = (pct(&ok, 0.5), pct(&ok, 0.99), pct(&all, 1.0));
    println!(
        "pushed in {pushed_in:.1} s ({:.0}/s): {} success, {refused} refused (503), {failed} failed",
        total as f64 / pushed_in,
        success.len()
    );
    println!(
        "push -> success: p50 {p50:.2} ms, p99 {p99:.2} ms; every answer within {max:.1} ms (targets: p99 < {TARGET_P99_MS} ms without refusals, all < {TARGET_MAX_MS} ms)"
    );
    println!(
        "delivered: {} of {} answered success ({lost} lost, {twice} twice, {refused_delivered} refused ones committed anyway), drained {drained_in:.1} s after the last push (target < {TARGET_DRAIN_S} s)",
        success.len() - lost,
        success.len()
    );
    println!("outbox at the last push: {backlog} waiting; drained after it at {:.0}/s", backlog as f64 / drained_in);
    println!(
        "gateway: RSS {rss_before:.0} MB -> {rss_after:.0} MB after the pushes, peak {rss_peak:.0} MB (growth target < {TARGET_RSS_MB} MB); CPU {:.1} µs per push",
        cpu_push * 1e6 / total as f64
    );
    gw.stop().await;
    let passed = lost == 0
        && twice == 0
        && failed == 0
        && max < TARGET_MAX_MS
        && (refused > 0 || p99 < TARGET_P99_MS)
        && drained_in < TARGET_DRAIN_S
        && rss_peak - rss_before < TARGET_RSS_MB;
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}
