//! `upstream.proxy` against the real binary: WeChat (the sandbox) reachable only through a
//! forward proxy that wants credentials, over plain HTTP (absolute form) and over HTTPS (a
//! CONNECT tunnel, the host's certificate verified inside it); and a proxy that refuses the
//! credentials, answered 502 quickly, counted and named without the password.

mod common;

use base64::Engine;
use common::tls::{ca_and_server, tls_in_front_of};
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wxgate::AppId;

const A: &str = "wx1111111111111111";
const PROXY_USER: &str = "egress";
const PROXY_PASSWORD: &str = "proxy-password-4242";
/// WeChat's host as the gateway knows it: `.test` never resolves, so a call that did not go
/// through the proxy could not reach anything.
const WECHAT_HOST: &str = "wechat.test";

/// A forward proxy of the test's own: every host leads to `to`. It wants `Proxy-Authorization`
/// with its credentials on a connection's first request (407 and the connection closed without
/// them), then carries the connection through: `CONNECT` as a tunnel, a request in absolute form
/// as it is (the sandbox's HTTP server takes the absolute form, as RFC 9112 says a server must).
struct ForwardProxy {
    addr: SocketAddr,
    /// Each connection's first request target: `CONNECT host:port`, or an absolute URI.
    asked: Arc<Mutex<Vec<String>>>,
}

impl ForwardProxy {
    async fn start(to: SocketAddr, password: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&asked);
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{PROXY_USER}:{password}")));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(carry(client, to, expected.clone(), Arc::clone(&seen)));
            }
        });
        Self { addr, asked }
    }

    fn url(&self, password: &str) -> String {
        format!("http://{PROXY_USER}:{password}@{}", self.addr)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

async fn carry(mut client: TcpStream, to: SocketAddr, expected: String, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || !matches!(client.read(&mut byte).await, Ok(1)) {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_owned();
    let authorized = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| name.eq_ignore_ascii_case("proxy-authorization") && value.trim() == expected);
    seen.lock().unwrap().push(request_line.rsplit_once(' ').map_or(request_line.clone(), |(r, _)| r.to_owned()));
    if !authorized {
        let refusal = "HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"egress\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let _ = client.write_all(refusal.as_bytes()).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(to).await else { return };
    if request_line.starts_with("CONNECT ") {
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    } else if upstream.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A gateway whose WeChat is the sandbox behind TLS for [`WECHAT_HOST`] (signed by a CA the
/// gateway trusts), reachable only through the proxy returned, with the CA file it needs.
async fn over_https(setup: &mut Setup, sandbox: &wxgate::sandbox::Sandbox) -> (ForwardProxy, std::path::PathBuf) {
    let (ca_pem, server) = ca_and_server(WECHAT_HOST);
    let front = tls_in_front_of(sandbox.addr(), server).await;
    let proxy = ForwardProxy::start(front, PROXY_PASSWORD).await;
    setup.upstream = format!("https://{WECHAT_HOST}");
    let ca_path = setup.dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    (proxy, ca_path)
}

/// [`over_https`] with the right password, the account authorized and a call made.
async fn authorized_over_https() -> (Setup, wxgate::sandbox::Sandbox, Gateway, ForwardProxy, std::path::PathBuf) {
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    let (proxy, ca_path) = over_https(&mut setup, &sandbox).await;
    setup.env = proxy_env(&ca_path, proxy.url(PROXY_PASSWORD));
    let gw = setup.start().await;
    authorized_and_called(&setup, &sandbox, &gw).await;
    (setup, sandbox, gw, proxy, ca_path)
}

fn proxy_env(ca_path: &std::path::Path, proxy_url: String) -> Vec<(String, String)> {
    vec![("WXGATE_UPSTREAM_CA_FILE".into(), ca_path.display().to_string()), ("WXGATE_UPSTREAM_PROXY".into(), proxy_url)]
}

/// The account authorized and one proxied call made: everything the gateway asks of WeChat.
async fn authorized_and_called(setup: &Setup, sandbox: &wxgate::sandbox::Sandbox, gw: &Gateway) {
    ticket_delivered(sandbox).await;
    sandbox.authorize(&AppId::parse(A).unwrap()).await.unwrap_or_else(|e| panic!("{e:?}; log:\n{}", setup.log()));
    eventually(Duration::from_secs(10), "the authorizer active", || async {
        let a: serde_json::Value = gw.admin_get(&format!("/admin/authorizers/{A}")).await.json().await.unwrap();
        a["state"] == "active"
    })
    .await;
    let call = format!("/{A}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}");
    let r = gw.http.get(gw.proxy_url(&call)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errcode"], 0, "{body}");
    assert!(sandbox.requests().iter().any(|r| r.path.ends_with("/cgi-bin/user/info")));
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_over_plain_http_is_reached_only_through_the_proxy() {
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    let proxy = ForwardProxy::start(sandbox.addr(), PROXY_PASSWORD).await;
    setup.upstream = format!("http://{WECHAT_HOST}");
    setup.env.push(("WXGATE_UPSTREAM_PROXY".into(), proxy.url(PROXY_PASSWORD)));
    let gw = setup.start().await;
    authorized_and_called(&setup, &sandbox, &gw).await;
    let asked = proxy.asked();
    assert!(asked.iter().any(|a| a.starts_with("POST http://wechat.test/cgi-bin/component/")), "{asked:?}");
    assert!(asked.iter().any(|a| a.starts_with("GET http://wechat.test/cgi-bin/user/info?")), "{asked:?}");
    assert!(asked.iter().all(|a| !a.starts_with("CONNECT")), "{asked:?}");
    assert_no_secrets(&setup.log(), &[PROXY_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_over_https_is_reached_in_a_connect_tunnel_and_verified() {
    let (setup, _sandbox, _gw, proxy, _) = authorized_over_https().await;
    let asked = proxy.asked();
    assert!(!asked.is_empty() && asked.iter().all(|a| a == "CONNECT wechat.test:443"), "{asked:?}");
    assert_no_secrets(&setup.log(), &[PROXY_PASSWORD]);
}

/// The same gateway and store, first with the proxy's password, then with a wrong one: the
/// proxied call (its token kept from before) is refused at the proxy, answered 502 at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_refuses_the_credentials_gets_502_quickly_counted_and_named() {
    let (setup, _sandbox, gw, proxy, ca_path) = authorized_over_https().await;
    drop(gw);

    let mut wrong = setup.sibling();
    wrong.store_toml = Some(format!("[store]\nbackend = \"sqlite\"\npath = \"{}\"", setup.db_path().display()));
    wrong.env = proxy_env(&ca_path, proxy.url("not-the-password"));
    let gw = wrong.start().await;
    let started = Instant::now();
    let call = format!("/{A}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}");
    let r = gw.http.get(gw.proxy_url(&call)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(2), "answered at once: {:?}", started.elapsed());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errmsg"].as_str().is_some_and(|m| m.starts_with("wxgate: ")), "{body}");
    assert!(gw.metric(r#"wxgate_egress_proxy_failures_total{reason="refused"}"#).await.unwrap_or(0.0) >= 1.0);
    let log = wrong.log();
    assert!(log.contains(&proxy.addr.to_string()) && log.contains("407"), "the proxy named, with its answer:\n{log}");
    assert_no_secrets(&log, &["not-the-password", PROXY_PASSWORD]);
}
