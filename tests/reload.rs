//! SIGHUP reload, against the real binary: clients and the admin token change while calls run
//! over kept-alive connections, none of which fails or is closed; a bad file and a restart-only
//! change are refused whole, named in the log and counted.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wxgate::AppId;

const ACCOUNT: &str = "wx1111111111111111";
const LEAVING_KEY: &str = "leaving-client-key-0123456789";
const ARRIVING_KEY: &str = "arriving-client-key-0123456789";
const NEW_ADMIN_TOKEN: &str = "new-admin-token-0123456789";
const CONNECTIONS: usize = 3;

fn client_toml(name: &str, key: &str) -> String {
    format!("\n[[clients]]\nname = \"{name}\"\nkey = \"{key}\"\nauthorizers = [\"{ACCOUNT}\"]\n")
}

/// One kept-alive HTTP/1.1 connection to the proxy: a closed connection is an error, not a
/// silent reconnect.
struct KeptAlive(BufReader<TcpStream>);

impl KeptAlive {
    async fn open(addr: std::net::SocketAddr) -> Self {
        Self(BufReader::new(TcpStream::connect(addr).await.unwrap()))
    }

    /// The status and body of one call with `key`.
    async fn call(&mut self, key: &str) -> Result<(u16, String), String> {
        let request = format!(
            "GET /{ACCOUNT}/cgi-bin/user/info?openid=o1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        self.0.get_mut().write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        if self.0.read_line(&mut line).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("the gateway closed the connection".into());
        }
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.0.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').ok_or(format!("header {header:?}"))?;
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "connection" if value.trim().eq_ignore_ascii_case("close") => {
                    return Err("the gateway asked to close the connection".into())
                }
                "transfer-encoding" => return Err("a chunked answer: this test reads Content-Length only".into()),
                _ => {}
            }
        }
        let mut body = vec![0; length.ok_or("no content-length")?];
        self.0.read_exact(&mut body).await.map_err(|e| format!("body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Calls over each connection until told to stop; every answer must be a WeChat success.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let mut conn = KeptAlive::open(proxy).await;
            let (stop, calls, failures) = (Arc::clone(&stop), Arc::clone(&calls), Arc::clone(&failures));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match conn.call(CLIENT_KEY).await {
                        Ok((200, body)) if body.contains("\"errcode\":0") => {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => failures.lock().unwrap().push(format!("{status} {body}")),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            return;
                        }
                    }
                }
            }));
        }
        Self { stop, calls, failures, tasks }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful calls, so that a step is known to have run under load.
    async fn see_more(&self, n: u64) {
        let from = self.calls();
        eventually(Duration::from_secs(20), "calls keep succeeding", || async { self.calls() >= from + n }).await;
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.calls.load(Ordering::Relaxed), failures)
    }
}

async fn status_with(gw: &Gateway, key: &str) -> u16 {
    let url = gw.proxy_url(&format!("/{ACCOUNT}/cgi-bin/user/info?openid=o1"));
    gw.http.get(url).bearer_auth(key).send().await.unwrap().status().as_u16()
}

async fn admin_status_with(gw: &Gateway, token: &str) -> u16 {
    gw.http.get(gw.admin_url("/admin/component")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Writes `text` as the config file and sends SIGHUP; waits until the reload with `result` is
/// counted.
async fn reload(setup: &Setup, gw: &Gateway, text: &str, result: &str) {
    let sample = format!("wxgate_config_reloads_total{{result=\"{result}\"}}");
    let before = gw.metric(&sample).await.unwrap_or(0.0);
    std::fs::write(setup.dir.path().join("wxgate.toml"), text).unwrap();
    let sent = std::process::Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().unwrap();
    assert!(sent.success());
    eventually(Duration::from_secs(10), &format!("a reload counted as {result}"), || async {
        gw.metric(&sample).await.unwrap_or(0.0) >= before + 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_clients_and_admin_token_under_load_and_refuses_bad_or_restart_only_changes() {
    let mut setup = Setup::new();
    setup.extra_toml = client_toml("leaving", LEAVING_KEY);
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    sandbox.authorize(&AppId::parse(ACCOUNT).unwrap()).await.unwrap();
    eventually(Duration::from_secs(10), "the account authorized", || async {
        gw.admin_get(&format!("/admin/authorizers/{ACCOUNT}")).await.status() == 200
    })
    .await;
    assert_eq!(status_with(&gw, LEAVING_KEY).await, 200);
    assert_eq!(status_with(&gw, ARRIVING_KEY).await, 401);
    for result in ["ok", "invalid", "refused"] {
        let sample = format!("wxgate_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(gw.metric(&sample).await, Some(0.0), "{sample} is listed from the start");
    }

    let load = Load::start(gw.proxy).await;
    load.see_more(50).await;

    // One client added, one removed, a new admin token: all at once, while calls run.
    setup.extra_toml = client_toml("arriving", ARRIVING_KEY);
    let next = setup.config_toml().replace(ADMIN_TOKEN, NEW_ADMIN_TOKEN);
    reload(&setup, &gw, &next, "ok").await;
    assert_eq!(status_with(&gw, ARRIVING_KEY).await, 200);
    assert_eq!(status_with(&gw, LEAVING_KEY).await, 401);
    assert_eq!(admin_status_with(&gw, NEW_ADMIN_TOKEN).await, 200);
    assert_eq!(admin_status_with(&gw, ADMIN_TOKEN).await, 401);
    load.see_more(50).await;

    // A file with an error is refused whole: the new clients list in it is not taken either.
    let bad = format!("{}{}", next, client_toml("short", "too-short"))
        .replace(&client_toml("arriving", ARRIVING_KEY), &client_toml("back", LEAVING_KEY));
    reload(&setup, &gw, &bad, "invalid").await;
    assert_eq!(status_with(&gw, ARRIVING_KEY).await, 200);
    assert_eq!(status_with(&gw, LEAVING_KEY).await, 401);
    load.see_more(50).await;

    // A restart-only key is refused by name, with the reloadable change beside it.
    // Never bound: the reload that names it is refused.
    let other_port = setup.proxy.port().wrapping_add(1).max(1);
    let moved = next
        .replace(&format!("proxy = \"{}\"", setup.proxy), &format!("proxy = \"127.0.0.1:{other_port}\""))
        .replace(&client_toml("arriving", ARRIVING_KEY), &client_toml("back", LEAVING_KEY));
    reload(&setup, &gw, &moved, "refused").await;
    assert_eq!(status_with(&gw, ARRIVING_KEY).await, 200);
    assert_eq!(status_with(&gw, LEAVING_KEY).await, 401);
    load.see_more(50).await;

    let (calls, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed calls under reload: {failures:?}");
    assert!(calls >= 200, "{calls} calls");
    println!("{calls} calls over {CONNECTIONS} kept-alive connections through 3 reloads, none failed");
    let log = setup.log();
    assert!(log.contains("config reloaded"), "{log}");
    assert!(log.contains("clients[2].key"), "the bad key is named: {log}");
    let refused = log.lines().find(|l| l.contains("change only with a restart")).expect("a refusal line");
    assert!(refused.contains("listen.proxy") && !refused.contains("clients"), "{refused}");
    assert_no_secrets(&log, &[LEAVING_KEY, ARRIVING_KEY, NEW_ADMIN_TOKEN]);
}
