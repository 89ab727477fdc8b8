//! A release job over a fleet: `cargo bench --bench releases_load` (release build).
//!
//! Starts the sandbox in this process (audits of 100 ms, verdicts pushed) and the release
//! `wxgate` binary on SQLite; authorizes ACCOUNTS mini programs (default 10,000) through the
//! real flow; then starts one job over all of them at CONCURRENCY (default 50) and waits until it
//! is done. Reports the gateway process's RSS before and after the job and its CPU time per
//! account step (commit, submit, release: three per account), read from /proc, and checks that
//! every account was released once.
//!
//! Targets: RSS grows by less than 50 MB; under 1 ms of CPU per account step. Environment:
//! ACCOUNTS, CONCURRENCY, KEEP=1 (keep the work dir and print its path).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wxgate::sandbox::{Sandbox, SandboxConfig};
use wxgate::AppId;

const COMPONENT: &str = "wx0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const TARGET_RSS_MB: f64 = 50.0;
const TARGET_CPU_MS_PER_STEP: f64 = 1.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The process's resident set (kB) and CPU time (user + system, seconds).
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = rest[11].parse::<f64>().unwrap() + rest[12].parse::<f64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss_kb.parse().unwrap(), ticks / hz)
}

fn appid(n: u64) -> AppId {
    AppId::parse(&format!("wx{:016x}", 0x1000_0000 + n)).unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let passed = rt.block_on(run());
    std::process::exit(if passed { 0 } else { 1 });
}

async fn run() -> bool {
    let accounts = env_or("ACCOUNTS", 10_000);
    let concurrency = env_or("CONCURRENCY", 50);
    let dir = tempfile::tempdir().unwrap();
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let demo = SandboxConfig::demo();
    let sandbox_config = SandboxConfig {
        component_appid: AppId::parse(COMPONENT).unwrap(),
        callback_url: Some(format!("http://{proxy}/wxgate/callback/component")),
        audit_quota: u32::MAX,
        ..demo.quick_audits()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(sandbox_config.clone(), listener).await.unwrap();
    let config = format!(
        r#"
[component]
appid = "{COMPONENT}"
appsecret = "{secret}"
token = "{token}"
encoding_aes_key = "{aes}"

[upstream]
base_url = "{up}"
mp_base_url = "{up}"

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
"#,
        secret = sandbox_config.component_appsecret.expose(),
        token = sandbox_config.token.expose(),
        aes = sandbox_config.encoding_aes_key.expose(),
        up = sandbox.base_url(),
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
    let pid = gateway.id();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin_get = |path: &str| http.get(format!("http://{admin}{path}")).bearer_auth(ADMIN_TOKEN).send();
    let started = Instant::now();
    while http.get(format!("http://{admin}/readyz")).send().await.map_or(true, |r| r.status() != 200) {
        assert!(started.elapsed() < Duration::from_secs(30), "wxgate did not get ready");
        let _ = sandbox.push_ticket().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("authorizing {accounts} mini programs through the sandbox");
    let fleet: Vec<AppId> = (1..=accounts).map(appid).collect();
    for chunk in fleet.chunks(50) {
        let pushes = chunk.iter().map(|a| {
            sandbox.issue_auth_code(a);
            sandbox.set_account(a, 1, true);
            sandbox.authorize(a)
        });
        for result in futures_util::future::join_all(pushes).await {
            result.unwrap();
        }
    }
    let held = || async {
        let list: serde_json::Value = admin_get("/admin/authorizers?limit=0").await.unwrap().json().await.unwrap();
        list["total"].as_u64().unwrap_or(0)
    };
    while held().await < accounts {
        assert!(started.elapsed() < Duration::from_secs(600), "the fleet was not authorized in 10 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the follow-ups of the authorizations (info, first refreshes) settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (rss_before, cpu_before) = usage(pid);
    let body = serde_json::json!({"template_id": 42, "user_version": "9.9.9", "authorizers": fleet, "concurrency": concurrency});
    let job_started = Instant::now();
    let created =
        http.post(format!("http://{admin}/admin/releases")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    println!("job {id}: {accounts} accounts at concurrency {concurrency}");
    let mut peak_rss = rss_before;
    let job = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(usage(pid).0);
        let jobs: serde_json::Value = admin_get("/admin/releases").await.unwrap().json().await.unwrap();
        let job = jobs["jobs"][0].clone();
        if job["state"] != "running" || job_started.elapsed() > Duration::from_secs(1800) {
            break job;
        }
    };
    let took = job_started.elapsed().as_secs_f64();
    let (rss_after, cpu_after) = usage(pid);
    let _ = gateway.kill();
    let _ = gateway.wait();

    let stats = sandbox.stats();
    let released_once =
        fleet.iter().filter(|a| stats.code_ok.get(&*a.as_str()).is_some_and(|c| c.release == 1)).count();
    let steps = 3 * accounts;
    let cpu_ms_per_step = (cpu_after - cpu_before) * 1000.0 / steps as f64;
    let growth_mb = (peak_rss - rss_before) / 1024.0;
    println!("job {}: {} in {took:.1} s; counts {}", job["state"], job["id"], job["counts"]);
    println!(
        "released once: {released_once} of {accounts}; most in flight at once: {}",
        stats.max_in_audit_or_committed
    );
    println!(
        "gateway RSS: {:.1} MB before, {:.1} MB at peak, {:.1} MB after: +{growth_mb:.1} MB (target < {TARGET_RSS_MB} MB)",
        rss_before / 1024.0,
        peak_rss / 1024.0,
        rss_after / 1024.0
    );
    println!(
        "gateway CPU: {:.2} s for {steps} account steps = {cpu_ms_per_step:.3} ms a step (target < {TARGET_CPU_MS_PER_STEP} ms; all of the gateway's work, the calls and audit events included)",
        cpu_after - cpu_before
    );
    if std::env::var_os("KEEP").is_some() {
        println!("work dir kept: {}", dir.keep().display());
    }
    let passed = job["state"] == "done"
        && released_once as u64 == accounts
        && stats.max_in_audit_or_committed <= concurrency
        && growth_mb < TARGET_RSS_MB
        && cpu_ms_per_step < TARGET_CPU_MS_PER_STEP;
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}
