//! Test support: the real `wxgate` binary on loopback ports, with its log captured, and
//! WeChat-style pushes encrypted with the crate's own crypto.
#![allow(dead_code)]

pub mod redis_server;
pub mod release_jobs;
pub mod tls;
pub mod wxcrypt;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

pub const COMPONENT_APPID: &str = "wx0123456789abcdef";
pub const MSG_TOKEN: &str = "pamtest";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const APPSECRET: &str = "appsecret-0123456789abcdef0123456";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub const CLIENT_KEY: &str = "client-key-0123456789abcdef";

/// Every secret a test configures: none may appear in the gateway's log.
pub const SECRETS: &[&str] = &[MSG_TOKEN, AES_KEY, APPSECRET, ADMIN_TOKEN, CLIENT_KEY];

/// A listening socket on a port the OS chose, held by the test for as long as it lives: the
/// gateway is handed the socket itself (see [`pass_sockets`]), so no other process can take
/// the port between the test choosing it and the gateway listening, nor across a restart.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A port for a server that cannot be handed a socket (redis-server), kept for the test as long
/// as this lives: chosen below the range the OS hands out for port 0 and outgoing connections,
/// so that nothing else takes it while the server is down, and claimed with a lock file, so that
/// no two tests (of any checkout) choose it at once.
pub struct PortClaim {
    pub port: u16,
    _lock: std::fs::File,
}

pub fn claim_port() -> PortClaim {
    use std::os::fd::AsRawFd;
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (first_ephemeral.saturating_sub(10_000).max(1024), first_ephemeral);
    let dir = std::env::temp_dir().join("wxgate-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..1000 {
        let port = low + rand::random::<u16>() % (high - low);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .unwrap();
        // SAFETY: flock on a descriptor this function owns; released when the file is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // another test holds it
        }
        // Something outside the tests may listen there: then another port.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return PortClaim { port, _lock: lock };
        }
    }
    panic!("no free port below {high}");
}

/// A claimed port (see [`claim_port`]) kept until the test process ends (nextest runs each test
/// in its own), for servers that take a port number only.
pub fn free_port() -> u16 {
    let claim = claim_port();
    let port = claim.port;
    std::mem::forget(claim);
    port
}

/// Hands `sockets` to the child as systemd's socket activation does: descriptors 3, 4, ...
/// in order, named in `LISTEN_FDNAMES`, which `wxgate` takes instead of binding.
pub fn pass_sockets(command: &mut Command, sockets: &[(&str, &TcpListener)]) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    const MAX: usize = 8;
    assert!(sockets.len() <= MAX);
    let names = sockets.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(":");
    let mut fds = [0; MAX];
    for (slot, (_, socket)) in fds.iter_mut().zip(sockets) {
        *slot = socket.as_raw_fd();
    }
    let count = sockets.len();
    command.env("LISTEN_FDS", count.to_string()).env("LISTEN_FDNAMES", names).env_remove("LISTEN_PID");
    // SAFETY: between fork and exec only fcntl, dup2 and close run (async-signal-safe, no
    // allocation). Every socket is first copied above 100, so that moving one to 3 + i never
    // closes another that happens to sit there; dup2 leaves the copy without FD_CLOEXEC.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; MAX];
            for i in 0..count {
                high[i] = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().take(count).enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*fd);
            }
            Ok(())
        });
    }
}

pub fn crypt() -> MsgCrypt {
    MsgCrypt::new(&Secret::new(MSG_TOKEN), &Secret::new(AES_KEY), COMPONENT_APPID).unwrap()
}

/// A working directory with a config file, the SQLite file and the log, and the gateway's
/// two listening sockets, held for as long as the setup lives (restarts reuse them).
pub struct Setup {
    pub dir: tempfile::TempDir,
    proxy_socket: TcpListener,
    admin_socket: TcpListener,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// WeChat's address: a closed port unless a test runs the sandbox.
    pub upstream: String,
    /// `[refresh]`, `[[clients]]` and the like, appended to the config.
    pub extra_toml: String,
    /// The `[store]` section; the SQLite file in `dir` unless a test sets another.
    pub store_toml: Option<String>,
    /// Variables for the gateway's process (`WXGATE_*` overrides).
    pub env: Vec<(String, String)>,
    /// Whether the config has a `[component]` (a gateway of owned accounts only has none).
    pub platform: bool,
}

impl Setup {
    pub fn new() -> Self {
        let (proxy_socket, admin_socket) = (listener(), listener());
        Self {
            dir: tempfile::tempdir().unwrap(),
            proxy: proxy_socket.local_addr().unwrap(),
            admin: admin_socket.local_addr().unwrap(),
            proxy_socket,
            admin_socket,
            upstream: "http://127.0.0.1:9".into(),
            extra_toml: String::new(),
            store_toml: None,
            env: Vec::new(),
            platform: true,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data/wxgate.sqlite3")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wxgate.log")
    }

    pub fn config_toml(&self) -> String {
        let component = match self.platform {
            true => format!(
                "[component]\nappid = \"{COMPONENT_APPID}\"\nappsecret = \"{APPSECRET}\"\ntoken = \"{MSG_TOKEN}\"\n\
                 encoding_aes_key = \"{AES_KEY}\"\n"
            ),
            false => String::new(),
        };
        format!(
            r#"
{component}
[upstream]
base_url = "{upstream}"
mp_base_url = "{upstream}"
timeout_ms = 3000

[listen]
proxy = "{proxy}"
admin = "{admin}"
public_base_url = "http://{proxy}"

{store}

[admin]
token = "{ADMIN_TOKEN}"

[server]
threads = 1
shutdown_grace_secs = 0

[[clients]]
name = "shop-backend"
key = "{CLIENT_KEY}"
authorizers = ["*"]
{extra}
"#,
            proxy = self.proxy,
            admin = self.admin,
            store = self
                .store_toml
                .clone()
                .unwrap_or_else(|| format!("[store]\nbackend = \"sqlite\"\npath = \"{}\"", self.db_path().display())),
            upstream = self.upstream,
            extra = self.extra_toml,
        )
    }

    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("wxgate.toml");
        std::fs::write(&path, self.config_toml()).unwrap();
        path
    }

    /// Another instance of the same gateway: same config, its own listeners and log.
    pub fn sibling(&self) -> Setup {
        let mut other = Setup::new();
        other.upstream = self.upstream.clone();
        other.extra_toml = self.extra_toml.clone();
        other.store_toml = self.store_toml.clone();
        other.platform = self.platform;
        other
    }

    /// Starts the gateway and waits until its admin listener answers.
    pub async fn start(&self) -> Gateway {
        let config = self.write_config();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wxgate"));
        command
            .arg("--config")
            .arg(&config)
            .env("WXGATE_LOG", "trace")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        pass_sockets(&mut command, &[("proxy", &self.proxy_socket), ("admin", &self.admin_socket)]);
        let child = command.spawn().unwrap();
        let gateway = Gateway { child: Some(child), proxy: self.proxy, admin: self.admin, http: client() };
        gateway.wait_healthy(self.log_path()).await;
        gateway
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build().unwrap()
}

/// A running `wxgate` process; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
}

impl Gateway {
    async fn wait_healthy(&self, log: PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // Both listeners: pingora starts its services one after the other.
            if let Ok(r) = self.http.get(self.admin_url("/healthz")).send().await {
                if r.status() == 200 && tokio::net::TcpStream::connect(self.proxy).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("wxgate did not become healthy; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal and waits, at most `within`, for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str, within: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Kills the process outright, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http.get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one sample in `/metrics`, e.g. `wxgate_callback_rejected_total{reason="xml"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }

    /// Posts a push to the authorization-event URL as WeChat would: encrypted, signed.
    pub async fn push(&self, crypt: &MsgCrypt, message: &str) -> reqwest::Response {
        self.try_push(crypt, message).await.unwrap()
    }

    /// [`Gateway::push`], with a failure to get an answer returned.
    pub async fn try_push(&self, crypt: &MsgCrypt, message: &str) -> reqwest::Result<reqwest::Response> {
        let (timestamp, nonce) = ("1700000000", "nonce123");
        let sealed = crypt.seal(message, timestamp, nonce);
        let body = envelope(&sealed.encrypt);
        let query =
            format!("timestamp={timestamp}&nonce={nonce}&encrypt_type=aes&msg_signature={}", sealed.msg_signature);
        self.http.post(self.proxy_url(&format!("/wxgate/callback/component?{query}"))).body(body).send().await
    }

    pub async fn post_callback(&self, query: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http.post(self.proxy_url(&format!("/wxgate/callback/component?{query}"))).body(body).send().await.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Setup {
    /// A sandbox with this setup's credentials, pushing to its callback; lifetimes in seconds.
    pub async fn sandbox(&mut self, token_lifetime_secs: u64) -> wxgate::sandbox::Sandbox {
        let config = self.sandbox_config(token_lifetime_secs);
        self.sandbox_from(config).await
    }

    /// What [`Setup::sandbox`] starts, for a test to change before [`Setup::sandbox_from`].
    pub fn sandbox_config(&self, token_lifetime_secs: u64) -> wxgate::sandbox::SandboxConfig {
        wxgate::sandbox::SandboxConfig {
            component_appid: wxgate::AppId::parse(COMPONENT_APPID).unwrap(),
            component_appsecret: Secret::new(APPSECRET),
            token: Secret::new(MSG_TOKEN),
            encoding_aes_key: Secret::new(AES_KEY),
            callback_url: Some(format!("http://{}/wxgate/callback/component", self.proxy)),
            ticket_interval: Duration::from_secs(600),
            token_lifetime: Duration::from_secs(token_lifetime_secs),
            grace: Duration::from_secs(1),
            rotate_refresh_tokens: true,
            ..wxgate::sandbox::SandboxConfig::demo()
        }
    }

    pub async fn sandbox_from(&mut self, config: wxgate::sandbox::SandboxConfig) -> wxgate::sandbox::Sandbox {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox = wxgate::sandbox::Sandbox::start(config, listener).await.unwrap();
        self.upstream = sandbox.base_url();
        sandbox
    }
}

/// Waits until the gateway holds a ticket. The sandbox pushes its first ticket as it starts, into
/// the gateway's held listener: this waits for that push to be answered, and pushes one only if
/// it failed. A second ticket right behind the first would race the refresh the first started
/// (the sandbox, strict, refuses a superseded ticket with 61006), and stories count those calls.
pub async fn ticket_delivered(sandbox: &wxgate::sandbox::Sandbox) {
    if sandbox.config().callback_url.is_none() {
        return;
    }
    eventually(Duration::from_secs(15), "the sandbox's first ticket push is answered", || async {
        let stats = sandbox.stats();
        stats.tickets_delivered > 0 || stats.pushes_failed > 0
    })
    .await;
    if sandbox.stats().tickets_delivered == 0 {
        sandbox.push_ticket().await.unwrap();
    }
}

/// A gateway (with `extra_toml` in its config) in front of a sandbox in which `authorizer` has
/// authorized the platform, once the gateway holds it active.
pub async fn with_active_authorizer(extra_toml: &str, authorizer: &str) -> (Setup, wxgate::sandbox::Sandbox, Gateway) {
    let mut setup = Setup::new();
    setup.extra_toml = extra_toml.to_owned();
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    let appid = wxgate::AppId::parse(authorizer).unwrap();
    sandbox.authorize(&appid).await.unwrap_or_else(|e| panic!("{e:?}; log:\n{}", setup.log()));
    eventually(Duration::from_secs(10), "the authorizer active", || async {
        let a: serde_json::Value =
            gw.admin_get(&format!("/admin/authorizers/{authorizer}")).await.json().await.unwrap();
        a["state"] == "active"
    })
    .await;
    (setup, sandbox, gw)
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn envelope(encrypt: &str) -> String {
    format!("<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
}

pub fn ticket_xml(ticket: &str, create_time: i64) -> String {
    format!(
        "<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
         <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    )
}

pub fn authorized_xml(info_type: &str, authorizer: &str, code: &str, create_time: i64) -> String {
    format!(
        "<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType><AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>\
         <AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>\
         <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
         <PreAuthCode><![CDATA[preauthcode@@@xyz]]></PreAuthCode></xml>",
        create_time + 3600
    )
}

pub fn unix_now() -> i64 {
    wxgate::store::unix_now()
}

pub fn assert_no_secrets(log: &str, extra: &[&str]) {
    for s in SECRETS.iter().chain(extra) {
        assert!(!log.contains(s), "the log contains a secret ({} chars); log:\n{log}", s.len());
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
