//! A million authorizers (`WXGATE_BENCH_AUTHORIZERS` to change it): resident memory, time to
//! load them at start-up from SQLite and from Redis, the busiest second of their refresh
//! schedule against the average, and (Redis) what a catch-up after a Redis restart costs when
//! 1 % changed meanwhile, against a full load.
//!
//! `cargo bench --bench authorizers` (`WXGATE_BENCH_BACKENDS=sqlite` or `redis` for one). A
//! one-shot measurement, not criterion: the parent process writes the store, then runs itself
//! again to load it, so that the RSS measured is that of a process that only starts up (as
//! `wxgate` does), not one that also wrote the fleet. Redis is a private `redis-server` on a
//! free port (RDB in a temporary directory), never the shared one; it is restarted for the
//! catch-up.
//!
//! The fleet is the worst case for the schedule: every access token issued in the same second
//! (thousands of accounts authorized together, or a bulk refresh just before a restart), so
//! every `access_expires_at` is equal. The schedule is read from the service the load built,
//! then played forward over three token lifetimes with the real `steady_due`.
//!
//! Informative only: a missed target prints FAIL, the exit status stays 0.

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxgate::store::{SharedStore, SqliteStore};
use wxgate::tokens::{lead_ms, steady_due, Settings, TokenService};
use wxgate::wechat::{
    Authorization, AuthorizerInfo, AuthorizerTokens, ComponentApi, Issued, ListedAuthorizer, WechatError,
};
use wxgate::{AppId, Secret};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's own: returns what it can of the freed memory it holds to the OS.
    fn mi_collect(force: bool);
}

static AUTHORIZERS: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("WXGATE_BENCH_AUTHORIZERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
});
const COMPONENT: &str = "wx0123456789abcdef";
const LIFETIME_MS: i64 = 7_200_000;
const LIFETIMES: i64 = 3;
const AHEAD: Duration = Duration::from_secs(600);
const CHILD_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_DB";
const ISSUED_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_ISSUED_AT";

const REDIS_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_REDIS";
const TARGET_BYTES_EACH: f64 = 600.0;
const TARGET_LOAD_S_SQLITE: f64 = 5.0;
const TARGET_LOAD_S_REDIS: f64 = 15.0;
const TARGET_RATIO: f64 = 3.0;
const TARGET_CATCH_UP_SHARE: f64 = 0.02;

const STAGE_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_STAGE";

fn main() {
    if let Ok(spec) = std::env::var(REDIS_ENV) {
        return redis_bench::load_and_measure(&spec);
    }
    match (std::env::var_os(CHILD_ENV), std::env::var(STAGE_ENV).ok()) {
        (Some(db), None) => load_and_measure(Path::new(&db)),
        (Some(db), Some(stage)) => breakdown_stage(Path::new(&db), &stage),
        (None, _) => {
            let backends = std::env::var("WXGATE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,redis".into());
            if backends.contains("sqlite") {
                write_store_and_run_child();
            }
            if backends.contains("redis") {
                redis_bench::write_store_and_run_child();
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Parent: the store.

fn write_store_and_run_child() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wxgate.sqlite3");
    drop(SqliteStore::open(&path).expect("open store")); // creates the schema
    let started = Instant::now();
    let issued_at = now_ms();
    write_authorizers(&path, issued_at);
    let write_s = started.elapsed().as_secs_f64();
    let size_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let n = *AUTHORIZERS;
    println!("SQLite store: {n} authorizers written in {write_s:.2} s, {size_mb:.1} MB, all issued at the same moment (expires in 7200 s)");

    let status = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, &path)
        .env(ISSUED_ENV, issued_at.to_string())
        .status()
        .expect("run the measuring process");
    if !status.success() {
        eprintln!("measuring process failed: {status}");
    }

    // Where the memory goes: each part alone, each in a fresh process.
    println!("{}", "-".repeat(86));
    println!("memory breakdown (each part alone in a fresh process, RSS delta for {n})");
    for (stage, label) in [
        ("hashmap", "HashMap<AppId, Arc<_>> index, for comparison"),
        ("schedule", "Schedule with one Job::Authorizer each"),
    ] {
        let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD_ENV, &path)
            .env(STAGE_ENV, stage)
            .output()
            .expect("run a breakdown process");
        let mb: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
        println!("{:<60} {:>7.1} MB {:>6.0} B each", format!("  {label}"), mb, mb * 1e6 / n as f64);
    }
}

/// One part of the service's memory alone; prints its RSS delta in MB.
fn breakdown_stage(db: &Path, stage: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = SqliteStore::open(db).expect("open store");
    let component = AppId::parse(COMPONENT).unwrap();
    // The same appids as the store holds, made without reading it, so that no freed memory
    // (which the allocator keeps) hides what a part takes.
    let appids: Vec<AppId> = if stage == "records" {
        Vec::new()
    } else {
        (0..*AUTHORIZERS as u64).map(|i| AppId::parse(&format!("wx{:016x}", splitmix64(i))).unwrap()).collect()
    };
    // The appids themselves are not counted: each part holds its own clones, as the service does.
    let before = proc_status_mb("VmRSS");
    let after = match stage {
        "records" => {
            let records = rt.block_on(wxgate::store::Store::load_authorizers(&store, &component)).unwrap();
            let after = proc_status_mb("VmRSS");
            drop(records);
            after
        }
        "moka" => {
            let cache: moka::sync::Cache<AppId, Arc<u64>> = moka::sync::Cache::builder().build();
            for a in &appids {
                cache.insert(*a, Arc::new(0));
            }
            cache.run_pending_tasks();
            let after = proc_status_mb("VmRSS");
            drop(cache);
            after
        }
        "hashmap" => {
            let map: std::collections::HashMap<AppId, Arc<u64>> = appids.iter().map(|a| (*a, Arc::new(0))).collect();
            let after = proc_status_mb("VmRSS");
            drop(map);
            after
        }
        "schedule" => {
            let mut schedule = wxgate::tokens::Schedule::default();
            let mut rng = StdRng::seed_from_u64(5);
            for a in &appids {
                schedule.set(wxgate::tokens::Job::Authorizer(*a), rng.gen_range(0..3_300_000));
            }
            let after = proc_status_mb("VmRSS");
            drop(schedule);
            after
        }
        other => panic!("unknown stage {other}"),
    };
    println!("{:.2}", after - before);
}

/// Writes the fleet in one transaction, straight into the table the store created.
fn write_authorizers(path: &Path, issued_at: i64) {
    let mut conn = rusqlite::Connection::open(path).expect("open for bulk insert");
    conn.execute_batch("PRAGMA synchronous = OFF;").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO authorizers (component_appid, authorizer_appid, state, refresh_token, access_token,
                     access_expires_at, authorized_at, last_refresh_at, last_error, auth_code_sha1)
                 VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
            )
            .unwrap();
        for i in 0..*AUTHORIZERS as u64 {
            // splitmix64 is a bijection: distinct, random-looking appids.
            let (appid, refresh, access, sha1, authorized_at) = fleet_member(i, issued_at);
            debug_assert!(AppId::is_valid(&appid));
            insert
                .execute(rusqlite::params![
                    COMPONENT,
                    appid,
                    refresh,
                    access,
                    issued_at + LIFETIME_MS,
                    authorized_at,
                    issued_at,
                    sha1
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
}

/// The `i`-th authorizer of the fleet as both writers store it: (appid, refresh, access, sha1,
/// authorized_at), from one seeded generator per authorizer so that the two stores hold the same.
fn fleet_member(i: u64, issued_at: i64) -> (String, String, String, String, i64) {
    const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = StdRng::seed_from_u64(i);
    let mut text = |prefix: &str, len: usize| {
        let mut s = String::with_capacity(len);
        s.push_str(prefix);
        while s.len() < len {
            s.push(TOKEN_CHARS[rng.gen_range(0..TOKEN_CHARS.len())] as char);
        }
        s
    };
    let refresh = text("refreshtoken@@@", 80);
    let access = text("85_", 150);
    let sha1: String = (0..40).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap()).collect();
    let authorized_at = issued_at - rng.gen_range(0..365 * 86_400_000i64);
    (format!("wx{:016x}", splitmix64(i)), refresh, access, sha1, authorized_at)
}

fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Child: start-up as `wxgate` does it, then the schedule.

/// A WeChat that is never called: the scheduler does not run here.
struct NoWechat;

#[async_trait]
impl ComponentApi for NoWechat {
    async fn component_token(&self, _: &Secret) -> Result<Issued, WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn create_preauthcode(&self, _: &Secret) -> Result<Issued, WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn query_auth(&self, _: &Secret, _: &str) -> Result<Authorization, WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn authorizer_token(&self, _: &Secret, _: &AppId, _: &Secret) -> Result<AuthorizerTokens, WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn authorizer_info(&self, _: &Secret, _: &AppId) -> Result<AuthorizerInfo, WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn authorizer_list(&self, _: &Secret, _: u32, _: u32) -> Result<(u64, Vec<ListedAuthorizer>), WechatError> {
        unreachable!("the bench never refreshes")
    }
    async fn start_push_ticket(&self) -> Result<(), WechatError> {
        unreachable!("the bench never refreshes")
    }
}

/// A field of /proc/self/status, in MB (`VmRSS`, `VmHWM`).
fn proc_status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

fn load_and_measure(db: &Path) {
    // The same start-up runtime as `app.rs`.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rss_before = proc_status_mb("VmRSS");
    let started = Instant::now();
    let store: SharedStore = Arc::new(SqliteStore::open(db).expect("open store"));
    let open_s = started.elapsed().as_secs_f64();
    measure(&rt, rss_before, store, open_s, "SQLite", TARGET_LOAD_S_SQLITE);
}

/// Loads the service from `store` as `wxgate` does, and prints what it took; returns the
/// service and the load's duration in seconds.
fn measure(
    rt: &tokio::runtime::Runtime,
    rss_before: f64,
    store: SharedStore,
    open_s: f64,
    label: &str,
    target_load_s: f64,
) -> (Arc<TokenService>, f64) {
    let authorizers = *AUTHORIZERS;
    let target_rss_mb = TARGET_BYTES_EACH * authorizers as f64 / 1e6;
    let load_started_ms = now_ms();
    let started = Instant::now();
    let service = rt
        .block_on(TokenService::load(AppId::parse(COMPONENT).unwrap(), store, Arc::new(NoWechat), Settings::new(AHEAD)))
        .expect("load");
    let load_s = started.elapsed().as_secs_f64();
    let loaded = service.authorizers().count(); // also runs moka's pending housekeeping
    let rss_after = proc_status_mb("VmRSS");
    let rss_peak = proc_status_mb("VmHWM");
    // What of it is live: mimalloc keeps some freed memory (the records' Vec) until collected.
    unsafe { mi_collect(true) };
    let rss_collected = proc_status_mb("VmRSS");
    let rss_delta = rss_after - rss_before;
    assert_eq!(loaded, authorizers as u64);

    // The plan the load made, read back from the service.
    let planned = service.authorizers().planned_refreshes();
    assert_eq!(planned.len(), authorizers, "every active authorizer is planned");
    let real = simulate(&planned, load_started_ms);

    // The same fleet planned over one whole steady period before `latest` instead of the
    // second half of the room: what the schedule looks like with that change to `spread_due`.
    let mut rng = StdRng::seed_from_u64(11);
    let issued_at: i64 =
        std::env::var(ISSUED_ENV).ok().and_then(|v| v.parse().ok()).expect("issued_at from the parent");
    let expires_at = issued_at + LIFETIME_MS;
    let whole_period: Vec<i64> = (0..authorizers)
        .map(|_| spread_over_period(load_started_ms, expires_at, AHEAD, LIFETIME_MS, &mut rng))
        .collect();
    let alternative = simulate(&whole_period, load_started_ms);

    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let n = authorizers as f64;
    println!();
    println!("{:<52} {:>14}   target", "measure", "value");
    println!("{}", "-".repeat(86));
    println!("{:<52} {:>14}", format!("{label}: authorizers (all active, equal expiry)"), authorizers);
    println!("{:<52} {:>12.3} s", "store open", open_s);
    println!(
        "{:<52} {:>12.3} s   {:<10} {}",
        "load (TokenService::load)",
        load_s,
        format!("<= {target_load_s} s"),
        verdict(load_s <= target_load_s)
    );
    println!("{:<52} {:>11.1} MB", "RSS before load", rss_before);
    println!(
        "{:<52} {:>11.1} MB   {:<10} {}",
        "RSS after load",
        rss_after,
        format!("<= {target_rss_mb:.0} MB"),
        verdict(rss_after <= target_rss_mb)
    );
    println!("{:<52} {:>11.1} MB", "RSS delta (the fleet)", rss_delta);
    let each = rss_delta * 1e6 / n;
    println!(
        "{:<52} {:>12.0} B   {:<10} {}",
        "  per authorizer",
        each,
        format!("<= {TARGET_BYTES_EACH} B"),
        verdict(each <= TARGET_BYTES_EACH)
    );
    println!("{:<52} {:>11.1} MB", "RSS peak during load (VmHWM)", rss_peak);
    println!("{:<52} {:>11.1} MB", "RSS after mi_collect(true) (live + allocator floor)", rss_collected);
    for (label, sim) in [("real plan", &real), ("alt: spread_over_period (proposed spread_due)", &alternative)] {
        println!("{}", "-".repeat(86));
        println!(
            "schedule, {label}: {} s simulated ({LIFETIMES} lifetimes of {} s)",
            sim.buckets.len(),
            LIFETIME_MS / 1000
        );
        for (window, range) in [
            ("whole window", 0..sim.buckets.len()),
            ("first lifetime (first wave)", 0..(LIFETIME_MS / 1000) as usize),
            ("last lifetime (steady state)", sim.buckets.len() - (LIFETIME_MS / 1000) as usize..sim.buckets.len()),
        ] {
            let (busiest, at, average) = peak(&sim.buckets[range.clone()]);
            let ratio = busiest as f64 / average;
            println!("{:<52} {:>10}/s", format!("  {window}: busiest second (t = {} s)", range.start + at), busiest);
            println!("{:<52} {:>10.1}/s", format!("  {window}: average"), average);
            println!(
                "{:<52} {:>11.2}×   {:<10} {}",
                format!("  {window}: busiest / average"),
                ratio,
                format!("<= {TARGET_RATIO}×"),
                verdict(ratio <= TARGET_RATIO)
            );
        }
        let per_lifetime = sim.total as f64 / n / LIFETIMES as f64;
        println!("{:<52} {:>12.3}   {:<10}", "  refreshes per authorizer per lifetime", per_lifetime, "≈ 1");
        println!(
            "{:<52} {:>12}",
            "  idle seconds (no refresh) in the last lifetime",
            sim.buckets[sim.buckets.len() - (LIFETIME_MS / 1000) as usize..].iter().filter(|&&c| c == 0).count()
        );
    }
    (service, load_s)
}

struct Simulation {
    buckets: Vec<u32>,
    total: u64,
}

/// Plays the schedule forward from `start_ms`: each authorizer refreshes when due, gets a token
/// that lives `LIFETIME_MS`, and is planned again by `steady_due`, as `refresh_authorizer` does.
fn simulate(first_dues: &[i64], start_ms: i64) -> Simulation {
    let seconds = (LIFETIMES * LIFETIME_MS / 1000) as usize;
    let end_ms = start_ms + seconds as i64 * 1000;
    let mut buckets = vec![0u32; seconds];
    let mut total = 0;
    let mut rng = StdRng::seed_from_u64(3);
    for &due in first_dues {
        let mut t = due.max(start_ms);
        while t < end_ms {
            buckets[((t - start_ms) / 1000) as usize] += 1;
            total += 1;
            t = steady_due(t, t + LIFETIME_MS, AHEAD, &mut rng);
        }
    }
    Simulation { buckets, total }
}

/// The busiest second (count and offset) and the average per second.
fn peak(buckets: &[u32]) -> (u32, usize, f64) {
    let (at, &busiest) = buckets.iter().enumerate().max_by_key(|(_, &c)| c).unwrap();
    let average = buckets.iter().map(|&c| c as f64).sum::<f64>() / buckets.len() as f64;
    (busiest, at, average)
}

/// The proposed `spread_due`: anywhere in the last steady period before `latest` (the shortest
/// time `steady_due` leaves between two refreshes), or in all the room there is if less. A
/// crowd spread over a whole period stays spread, since each refresh plans the next one a
/// period later; spread over half of it, it refreshes in a band that never widens much.
fn spread_over_period(now_ms: i64, expires_at: i64, ahead: Duration, lifetime_ms: i64, rng: &mut impl Rng) -> i64 {
    let lead = lead_ms(ahead, lifetime_ms);
    let latest = expires_at - lead;
    let room = latest - now_ms;
    if room <= 0 {
        return now_ms;
    }
    let period = lifetime_ms - lead - lead / 4;
    latest - rng.gen_range(0..=room.min(period))
}

/// The same fleet in a private Redis: written straight into the store's layout (as the SQLite
/// fleet is written straight into its table), loaded by a child process, then Redis restarted
/// with 1 % of the records changed behind the child's back (no announcement), and the catch-up
/// compared with a full load.
mod redis_bench {
    use super::*;
    use redis::Commands;
    use std::process::{Child, Command, Stdio};
    use wxgate::store::{RedisStore, Store};

    const PREFIX: &str = "wxgate-bench:";

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A `redis-server` of our own: RDB in `dir`, saved on SHUTDOWN.
    pub(super) fn start_server(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH")
    }

    /// Waits until the server answers PING (not LOADING).
    pub(super) fn wait_ready(url: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(mut c) = redis::Client::open(url).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start");
    }

    fn key(name: &str) -> String {
        format!("{PREFIX}{COMPONENT}:{name}")
    }

    pub(super) fn write_store_and_run_child() {
        let n = *AUTHORIZERS;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut server = start_server(port, dir.path());
        let url = format!("redis://127.0.0.1:{port}/0");
        wait_ready(&url);
        let started = Instant::now();
        let issued_at = now_ms();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        for chunk in (0..n as u64).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let (appid, refresh, access, sha1, authorized_at) = fleet_member(i, issued_at);
                pipe.hset_multiple(
                    key(&format!("authorizer:{appid}")),
                    &[
                        ("state", "active".to_owned()),
                        ("access_expires_at", (issued_at + LIFETIME_MS).to_string()),
                        ("authorized_at", authorized_at.to_string()),
                        ("last_refresh_at", issued_at.to_string()),
                        ("refresh_token", refresh),
                        ("access_token", access),
                        ("auth_code_sha1", sha1),
                    ],
                )
                .ignore();
                pipe.sadd(key("authorizers"), &appid).ignore();
                pipe.zadd(key("changed"), &appid, i + 1).ignore();
            }
            pipe.query::<()>(&mut conn).unwrap();
        }
        let _: () = conn.set(key("version"), n).unwrap();
        let used: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
        let used = used.lines().find_map(|l| l.strip_prefix("used_memory_human:")).unwrap_or("?").trim().to_owned();
        println!(
            "Redis store (private redis-server): {n} authorizers written in {:.2} s, Redis uses {used}",
            started.elapsed().as_secs_f64()
        );
        let status = Command::new(std::env::current_exe().unwrap())
            .env(REDIS_ENV, format!("{port} {}", dir.path().display()))
            .env(ISSUED_ENV, issued_at.to_string())
            .status()
            .expect("run the measuring process");
        if !status.success() {
            eprintln!("measuring process failed: {status}");
        }
        if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut c);
        }
        let _ = server.wait();
        // The server the child restarted is the child's; it was shut down above by port.
        drop(dir);
    }

    /// Record reads (HMGET, and HGETALL for the other hashes) the server has answered since
    /// it started.
    fn record_reads(url: &str) -> u64 {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
        let calls = |command: &str| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")).map(str::to_owned))
                .and_then(|v| v.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        calls("hmget") + calls("hgetall")
    }

    pub(super) fn load_and_measure(spec: &str) {
        let (port, dir) = spec.split_once(' ').expect("port and dir");
        let url = format!("redis://127.0.0.1:{port}/0");
        let component = AppId::parse(COMPONENT).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let rss_before = proc_status_mb("VmRSS");
        let started = Instant::now();
        let store = rt
            .block_on(RedisStore::connect(&Secret::new(url.as_str()), PREFIX, &component, &Default::default()))
            .expect("connect");
        let open_s = started.elapsed().as_secs_f64();
        let shared: SharedStore = Arc::new(store.clone());
        let changes = shared.changes().expect("a shared store announces changes");
        let (service, load_s) = measure(&rt, rss_before, shared, open_s, "Redis", TARGET_LOAD_S_REDIS);
        let hgetall_full = record_reads(&url);
        rt.spawn(Arc::clone(&service).follow_changes(changes));

        // The same reads a catch-up makes, timed against a full read of the store.
        let n = *AUTHORIZERS;
        let started = Instant::now();
        let all = rt.block_on(store.load_authorizers(&component)).unwrap();
        let full_read_s = started.elapsed().as_secs_f64();
        assert_eq!(all.len(), n);
        drop(all);

        // 1 % change behind this process's back: written, versioned, never announced.
        let changed: Vec<String> = (0..n as u64).step_by(100).map(|i| format!("wx{:016x}", splitmix64(i))).collect();
        let new_refresh_at = now_ms();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let heard: u64 = conn.get(key("version")).unwrap();
        let top: u64 = conn.incr(key("version"), changed.len()).unwrap();
        for (chunk_no, chunk) in changed.chunks(1000).enumerate() {
            let mut pipe = redis::pipe();
            for (j, appid) in chunk.iter().enumerate() {
                let v = heard + 1 + (chunk_no * 1000 + j) as u64;
                pipe.hset(key(&format!("authorizer:{appid}")), "last_refresh_at", new_refresh_at).ignore();
                pipe.zadd(key("changed"), appid, v).ignore();
            }
            pipe.query::<()>(&mut conn).unwrap();
        }
        assert_eq!(top, heard + changed.len() as u64);
        let started = Instant::now();
        let batches = rt.block_on(store.changed_since(&component, heard)).unwrap().expect("a delta").authorizers;
        let delta_read_s = started.elapsed().as_secs_f64();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), changed.len());
        drop(batches);

        // Redis restarts (saving its data); the follower reconnects and catches up.
        let _ = redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut conn);
        drop(conn);
        let mut server = start_server(port.parse().unwrap(), Path::new(dir));
        wait_ready(&url);
        let ready = Instant::now();
        let appids: Vec<AppId> = changed.iter().map(|a| AppId::parse(a).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let all_applied = || {
            appids
                .iter()
                .all(|a| service.authorizers().status(a).is_some_and(|s| s.last_refresh_at_ms == Some(new_refresh_at)))
        };
        while !all_applied() {
            assert!(Instant::now() < deadline, "the catch-up did not arrive");
            std::thread::sleep(Duration::from_millis(5));
        }
        let caught_up_s = ready.elapsed().as_secs_f64();
        let hgetall_catch_up = record_reads(&url);
        let share_time = delta_read_s / full_read_s;
        let share_calls = hgetall_catch_up as f64 / hgetall_full.max(1) as f64;
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        println!("{}", "-".repeat(86));
        println!("Redis restart with 1 % ({}) changed unannounced", changed.len());
        println!("{:<52} {:>12.3} s", "  full read of the store (load_authorizers)", full_read_s);
        println!("{:<52} {:>12.3} s", "  catch-up read (changed_since)", delta_read_s);
        println!(
            "{:<52} {:>11.2} %   {:<10} {}",
            "  catch-up / full read, time",
            share_time * 100.0,
            format!("<= {} %", TARGET_CATCH_UP_SHARE * 100.0),
            verdict(share_time <= TARGET_CATCH_UP_SHARE)
        );
        println!(
            "{:<52} {:>12}   (full load: {hgetall_full})",
            "  record reads after the restart until caught up", hgetall_catch_up
        );
        println!(
            "{:<52} {:>11.2} %   {:<10} {}",
            "  catch-up / full load, record reads",
            share_calls * 100.0,
            format!("<= {} %", TARGET_CATCH_UP_SHARE * 100.0),
            verdict(share_calls <= TARGET_CATCH_UP_SHARE)
        );
        println!(
            "{:<52} {:>12.3} s   (full load: {load_s:.3} s; includes the listener's 1 s reconnect pause)",
            "  Redis ready → all changes in memory", caught_up_s
        );
        if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut c);
        }
        let _ = server.wait();
        // The parent's SHUTDOWN finds nobody; its wait() reaps the first server.
        let _ = Store::backend(&store);
    }
}
