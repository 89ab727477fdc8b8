//! The gateway under test: the release `wxgate` binary with one `deliver` route, the outbox on
//! SQLite (WAL, `synchronous=FULL`) or on the Redis at 127.0.0.1:6379 under a key prefix of
//! its own, and what /proc says of it.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const COMPONENT: &str = "wx0123456789abcdef";
pub const TOKEN: &str = "pamtest";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub const SHOP: &str = "wx1111111111111111";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Redis,
}

pub struct Gateway {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    pub dir: tempfile::TempDir,
    /// The Redis key prefix, to be removed afterwards.
    pub prefix: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Gateway {
    pub async fn start(store: StoreKind, threads: u64, handler: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prefix = (store == StoreKind::Redis).then(|| format!("wxgate-bench-{}:", std::process::id()));
        let store_toml = match &prefix {
            None => format!("backend = \"sqlite\"\npath = \"{}\"", dir.path().join("wxgate.sqlite3").display()),
            Some(prefix) => format!("backend = \"redis\"\nredis_url = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\""),
        };
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
{store_toml}

[admin]
token = "{ADMIN_TOKEN}"

[server]
threads = {threads}
shutdown_grace_secs = 0

[proxy]
access_log = false

[[messages.routes]]
name = "shop"
authorizers = ["{SHOP}"]
url = "http://{handler}/wechat"
token = "handlertoken42"
mode = "deliver"
"#
        );
        let config_path = dir.path().join("wxgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("wxgate.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wxgate"))
            .arg("--config")
            .arg(&config_path)
            .env("WXGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the wxgate binary");
        let gateway = Self { proxy, admin, child, dir, prefix };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "wxgate did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    /// A field of the gateway's /proc status, in MB (`VmRSS`, `VmHWM`).
    pub fn memory_mb(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1));
        kb.and_then(|k| k.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0
    }

    /// The gateway's CPU time so far (user + system), in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Messages the outbox still holds, from the admin API.
    pub async fn outbox_total(&self) -> Option<u64> {
        let http = reqwest::Client::builder().no_proxy().build().ok()?;
        let url = format!("http://{}/admin/messages?limit=0", self.admin);
        let v: serde_json::Value = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.ok()?.json().await.ok()?;
        v["total"].as_u64()
    }

    /// Stops the gateway and removes what it left in Redis; KEEP=1 keeps the work dir.
    pub async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KEEP").is_some() {
            println!("work dir kept: {}", self.dir.keep().display());
        }
        if let Some(prefix) = &self.prefix {
            if let Ok(client) = redis::Client::open(REDIS_URL) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let pattern = format!("{prefix}*");
                    let keys: Vec<String> =
                        redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await.unwrap_or_default();
                    for chunk in keys.chunks(1000) {
                        let _: Result<(), _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut c).await;
                    }
                }
            }
        }
    }
}
