//! `wxgate demo`: the no-credentials tour. The sandbox plays WeChat, the gateway runs on the
//! embedded SQLite store, a demo account authorizes, and the lines to try are printed.

use crate::config::Config;
use crate::listeners::Sockets;
use crate::sandbox::{Sandbox, SandboxConfig, DEMO_AUTHORIZER_APPID};
use crate::AppId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token-0000";
pub const DEMO_CLIENT_KEY: &str = "demo-client-key-00000";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub sandbox: SocketAddr,
    /// Where the demo's SQLite file goes; reset at every start, since the sandbox forgets.
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Listen(#[from] crate::listeners::ListenError),
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("demo data directory: {0}")]
    Data(std::io::Error),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

/// The sandbox's timings, quicker than WeChat's so that refreshes show within minutes.
fn sandbox_config(opts: &DemoOptions) -> SandboxConfig {
    SandboxConfig {
        callback_url: Some(format!("http://{}/wxgate/callback/component", opts.proxy)),
        ticket_interval: Duration::from_secs(60),
        token_lifetime: Duration::from_secs(300),
        ..SandboxConfig::demo()
    }
}

fn gateway_config(opts: &DemoOptions, sandbox: &SandboxConfig) -> Result<Config, DemoError> {
    let toml = format!(
        r#"
[component]
appid = "{appid}"
appsecret = "{appsecret}"
token = "{token}"
encoding_aes_key = "{aes}"

[upstream]
base_url = "http://{sandbox_addr}"
mp_base_url = "http://{sandbox_addr}"

[listen]
proxy = "{proxy}"
admin = "{admin}"
public_base_url = "http://{proxy}"

[store]
backend = "sqlite"
path = "{db}"

[refresh]
ahead_secs = 60

[admin]
token = "{DEMO_ADMIN_TOKEN}"

[server]
shutdown_grace_secs = 0

[[clients]]
name = "demo-app"
key = "{DEMO_CLIENT_KEY}"
authorizers = ["*"]
component = true
reveal_tokens = true
"#,
        appid = sandbox.component_appid,
        appsecret = sandbox.component_appsecret.expose(),
        token = sandbox.token.expose(),
        aes = sandbox.encoding_aes_key.expose(),
        sandbox_addr = opts.sandbox,
        proxy = opts.proxy,
        admin = opts.admin,
        db = opts.data_dir.join("wxgate.sqlite3").display(),
    );
    Ok(Config::from_sources(&toml, std::iter::empty())?)
}

/// Runs until Ctrl-C.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    reset_data(opts)?;
    // The sockets first: with port 0, or sockets passed by the launcher, the addresses the
    // config and the printed lines name are only known once bound.
    let sandbox_socket = crate::listeners::take("sandbox", "--sandbox", opts.sandbox)?;
    let sockets = Sockets {
        proxy: crate::listeners::take("proxy", "--proxy", opts.proxy)?,
        admin: crate::listeners::take("admin", "--admin", opts.admin)?,
    };
    let opts = &DemoOptions {
        proxy: sockets.proxy.addr,
        admin: sockets.admin.addr,
        sandbox: sandbox_socket.addr,
        data_dir: opts.data_dir.clone(),
    };
    let sandbox_config = sandbox_config(opts);
    let config = gateway_config(opts, &sandbox_config)?;
    let listener = sandbox_socket.into_std();
    let tour_opts = opts.clone();
    // The sandbox's runtime lives as long as the process: it is not dropped when the gateway
    // stops, the process exits.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the sandbox");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a bound listener");
            tour(sandbox_config, listener, &tour_opts).await;
            std::future::pending::<()>().await
        });
    });
    crate::app::run_on(&config, None, sockets)?;
    Ok(())
}

fn reset_data(opts: &DemoOptions) -> Result<(), DemoError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(DemoError::Data)?;
    for suffix in ["", "-wal", "-shm"] {
        let path = opts.data_dir.join(format!("wxgate.sqlite3{suffix}"));
        if path.exists() {
            std::fs::remove_file(path).map_err(DemoError::Data)?;
        }
    }
    Ok(())
}

/// Starts the sandbox once the gateway listens (its first act is a ticket push), walks the
/// gateway through an authorization, then prints what to try. The sandbox runs on after.
async fn tour(config: SandboxConfig, listener: tokio::net::TcpListener, opts: &DemoOptions) {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("an HTTP client");
    let admin = format!("http://{}", opts.admin);
    if !wait_for(&http, &format!("{admin}/healthz"), None).await {
        eprintln!("wxgate demo: the gateway did not start");
        return;
    }
    let sandbox = match Sandbox::start(config, listener).await {
        Ok(sandbox) => sandbox,
        Err(e) => return eprintln!("wxgate demo: the sandbox did not start: {e}"),
    };
    if !wait_for(&http, &format!("{admin}/readyz"), None).await {
        eprintln!("wxgate demo: the gateway did not get a component token; see the log above");
        return;
    }
    let demo_account = AppId::parse(DEMO_AUTHORIZER_APPID).expect("a valid demo appid");
    if let Err(e) = sandbox.authorize(&demo_account).await {
        eprintln!("wxgate demo: the demo authorization failed: {e}");
        return;
    }
    let status_url = format!("{admin}/admin/authorizers/{demo_account}");
    if !wait_for(&http, &status_url, Some(DEMO_ADMIN_TOKEN)).await {
        eprintln!("wxgate demo: the demo account was not stored; see the log above");
        return;
    }
    // A closed stdout (`wxgate demo | head`) must not take the sandbox down with a panic.
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{}", instructions(opts, &demo_account));
}

/// Polls `url` until it answers 200, for at most 30 s.
async fn wait_for(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut req = http.get(url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if req.send().await.is_ok_and(|r| r.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn instructions(opts: &DemoOptions, account: &AppId) -> String {
    let (proxy, admin, sandbox) = (opts.proxy, opts.admin, opts.sandbox);
    let bearer = format!("-H 'Authorization: Bearer {DEMO_ADMIN_TOKEN}'");
    format!(
        "
wxgate demo is running: the sandbox at http://{sandbox} plays WeChat (a ticket every 60 s,
tokens that live 300 s), the gateway stores everything in {db}.
Demo account {account} has authorized. Try:

  # call WeChat's API through the gateway as an unchanged SDK would: the client key stands
  # where the access token goes, the account's appid prefixes the path
  curl -s 'http://{proxy}/{account}/cgi-bin/user/info?openid=o1&access_token={DEMO_CLIENT_KEY}'
  curl -s -X POST -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' http://{proxy}/{account}/cgi-bin/message/custom/send \\
       -d '{{\"touser\":\"o1\",\"msgtype\":\"text\",\"text\":{{\"content\":\"hi\"}}}}'

  # WeChat invalidates the token behind the gateway's back: the next call is replayed with a new one
  curl -s -X POST 'http://{sandbox}/sandbox/revoke?appid={account}'
  curl -s 'http://{proxy}/{account}/cgi-bin/user/info?openid=o1&access_token={DEMO_CLIENT_KEY}'

  # the raw token, for clients with reveal_tokens (a JS-SDK signer, a central token server)
  curl -s -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' http://{proxy}/wxgate/token/{account}

  # the gateway is ready, and what it holds (never a token)
  curl -s http://{admin}/readyz
  curl -s {bearer} http://{admin}/admin/component
  curl -s {bearer} http://{admin}/admin/authorizers

  # another owner authorizes (the sandbox pushes `authorized`; the gateway exchanges the code)
  curl -s -X POST 'http://{sandbox}/sandbox/authorize?appid=wx2222222222222222'
  curl -s {bearer} http://{admin}/admin/authorizers/wx2222222222222222

  # the authorization page, as an account owner would open it (the sandbox plays the consent page)
  open http://{proxy}/wxgate/authorize

  # refresh now, and watch the metrics
  curl -s -X POST {bearer} http://{admin}/admin/authorizers/{account}/refresh
  curl -s http://{admin}/metrics | grep '^wxgate_'

  # the web console: sign in with the admin token {DEMO_ADMIN_TOKEN}
  open http://{admin}/

Ctrl-C stops it.
",
        db = opts.data_dir.join("wxgate.sqlite3").display(),
    )
}
