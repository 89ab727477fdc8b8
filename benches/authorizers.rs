//! 100,000 authorizers: resident memory, time to load them from the SQLite store at start-up,
//! and the busiest second of their refresh schedule against the average.
//!
//! `cargo bench --bench authorizers`. A one-shot measurement, not criterion: the parent process
//! writes the store, then runs itself again to load it, so that the RSS measured is that of a
//! process that only starts up (as `wxgate` does), not one that also wrote 100,000 rows.
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

const AUTHORIZERS: usize = 100_000;
const COMPONENT: &str = "wx0123456789abcdef";
const LIFETIME_MS: i64 = 7_200_000;
const LIFETIMES: i64 = 3;
const AHEAD: Duration = Duration::from_secs(600);
const CHILD_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_DB";
const ISSUED_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_ISSUED_AT";

const TARGET_RSS_MB: f64 = 100.0;
const TARGET_LOAD_S: f64 = 2.0;
const TARGET_RATIO: f64 = 3.0;

const STAGE_ENV: &str = "WXGATE_BENCH_AUTHORIZERS_STAGE";

fn main() {
    match (std::env::var_os(CHILD_ENV), std::env::var(STAGE_ENV).ok()) {
        (Some(db), None) => load_and_measure(Path::new(&db)),
        (Some(db), Some(stage)) => breakdown_stage(Path::new(&db), &stage),
        (None, _) => write_store_and_run_child(),
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
    println!("store: {AUTHORIZERS} authorizers written in {write_s:.2} s, {size_mb:.1} MB, all issued at the same moment (expires in 7200 s)");

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
    println!("memory breakdown (each part alone in a fresh process, RSS delta for {AUTHORIZERS})");
    for (stage, label) in [
        ("records", "Vec<AuthorizerRecord> from load_authorizers (transient)"),
        ("moka", "moka::sync::Cache<AppId, Arc<_>> index, unbounded"),
        ("hashmap", "HashMap<AppId, Arc<_>> index, for comparison"),
        ("schedule", "Schedule with one Job::Authorizer each"),
    ] {
        let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD_ENV, &path)
            .env(STAGE_ENV, stage)
            .output()
            .expect("run a breakdown process");
        let mb: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
        println!("{:<60} {:>7.1} MB {:>6.0} B each", format!("  {label}"), mb, mb * 1e6 / AUTHORIZERS as f64);
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
        (0..AUTHORIZERS as u64).map(|i| AppId::parse(&format!("wx{:016x}", splitmix64(i))).unwrap()).collect()
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
    const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = StdRng::seed_from_u64(7);
    let text = |rng: &mut StdRng, prefix: &str, len: usize| {
        let mut s = String::with_capacity(len);
        s.push_str(prefix);
        while s.len() < len {
            s.push(TOKEN_CHARS[rng.gen_range(0..TOKEN_CHARS.len())] as char);
        }
        s
    };
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
        for i in 0..AUTHORIZERS as u64 {
            // splitmix64 is a bijection: distinct, random-looking appids.
            let appid = format!("wx{:016x}", splitmix64(i));
            debug_assert!(AppId::is_valid(&appid));
            let refresh = text(&mut rng, "refreshtoken@@@", 80);
            let access = text(&mut rng, "85_", 150);
            let sha1: String = (0..40).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap()).collect();
            let authorized_at = issued_at - rng.gen_range(0..365 * 86_400_000i64);
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
    let load_started_ms = now_ms();
    let started = Instant::now();
    let service = rt
        .block_on(TokenService::load(AppId::parse(COMPONENT).unwrap(), store, Arc::new(NoWechat), Settings::new(AHEAD)))
        .expect("load");
    let load_s = started.elapsed().as_secs_f64();
    let loaded = service.authorizer_count(); // also runs moka's pending housekeeping
    let rss_after = proc_status_mb("VmRSS");
    let rss_peak = proc_status_mb("VmHWM");
    // What of it is live: mimalloc keeps some freed memory (the records' Vec) until collected.
    unsafe { mi_collect(true) };
    let rss_collected = proc_status_mb("VmRSS");
    let rss_delta = rss_after - rss_before;
    assert_eq!(loaded, AUTHORIZERS as u64);

    // The plan the load made, read back from the service.
    let planned = service.planned_authorizer_refreshes();
    assert_eq!(planned.len(), AUTHORIZERS, "every active authorizer is planned");
    let real = simulate(&planned, load_started_ms);

    // The same fleet planned over one whole steady period before `latest` instead of the
    // second half of the room: what the schedule looks like with that change to `spread_due`.
    let mut rng = StdRng::seed_from_u64(11);
    let issued_at: i64 =
        std::env::var(ISSUED_ENV).ok().and_then(|v| v.parse().ok()).expect("issued_at from the parent");
    let expires_at = issued_at + LIFETIME_MS;
    let whole_period: Vec<i64> = (0..AUTHORIZERS)
        .map(|_| spread_over_period(load_started_ms, expires_at, AHEAD, LIFETIME_MS, &mut rng))
        .collect();
    let alternative = simulate(&whole_period, load_started_ms);

    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let n = AUTHORIZERS as f64;
    println!();
    println!("{:<52} {:>14}   target", "measure", "value");
    println!("{}", "-".repeat(86));
    println!("{:<52} {:>14}", "authorizers (all active, equal expiry)", AUTHORIZERS);
    println!("{:<52} {:>12.3} s", "store open (SqliteStore::open)", open_s);
    println!(
        "{:<52} {:>12.3} s   {:<10} {}",
        "load (TokenService::load)",
        load_s,
        format!("<= {TARGET_LOAD_S} s"),
        verdict(load_s <= TARGET_LOAD_S)
    );
    println!("{:<52} {:>11.1} MB", "RSS before load", rss_before);
    println!(
        "{:<52} {:>11.1} MB   {:<10} {}",
        "RSS after load",
        rss_after,
        format!("<= {TARGET_RSS_MB} MB"),
        verdict(rss_after <= TARGET_RSS_MB)
    );
    println!("{:<52} {:>11.1} MB", "RSS delta (the fleet)", rss_delta);
    println!("{:<52} {:>12.0} B", "  per authorizer", rss_delta * 1e6 / n);
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
