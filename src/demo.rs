//! `wxgate demo`: the no-credentials tour. The sandbox plays WeChat, the gateway runs on the
//! embedded SQLite store, a demo account authorizes, and the lines to try are printed.

use crate::config::Config;
use crate::listeners::Sockets;
use crate::sandbox::{OwnedAccount, Sandbox, SandboxConfig, DEMO_AUTHORIZER_APPID};
use crate::AppId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token-0000";
pub const DEMO_CLIENT_KEY: &str = "demo-client-key-00000";
/// The demo handler's own WeChat token (plaintext mode), as `[[messages.routes]]` names it.
pub const DEMO_HANDLER_TOKEN: &str = "demohandlertoken";

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
    #[error("demo message handler on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
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

fn gateway_config(opts: &DemoOptions, sandbox: &SandboxConfig, handler: SocketAddr) -> Result<Config, DemoError> {
    let owned = sandbox.accounts.first().cloned().unwrap_or_else(OwnedAccount::demo);
    let toml = format!(
        r#"
[component]
appid = "{appid}"
appsecret = "{appsecret}"
token = "{token}"
encoding_aes_key = "{aes}"

# An account the company owns itself, beside the authorized ones: its token from stable_token,
# its own message server at /wxgate/callback/{owned}.
[[accounts]]
appid = "{owned}"
secret = "{owned_secret}"
token = "{owned_token}"
encoding_aes_key = "{owned_aes}"

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

# The demo's own handler, written as for an official account in plaintext mode.
[[messages.routes]]
name = "demo-handler"
authorizers = ["*"]
msg_types = ["text"]
url = "http://{handler}/wechat"
token = "{DEMO_HANDLER_TOKEN}"
mode = "reply"

# The platform's own backend: told of every authorization, revocation and fast registration
# once the gateway has acted on it (the account can be called at once).
[[events.routes]]
name = "demo-tenants"
url = "http://{handler}/platform-events"
token = "{DEMO_HANDLER_TOKEN}"
"#,
        appid = sandbox.component_appid,
        appsecret = sandbox.component_appsecret.expose(),
        token = sandbox.token.expose(),
        aes = sandbox.encoding_aes_key.expose(),
        owned = owned.appid,
        owned_secret = owned.secret.expose(),
        owned_token = owned.token.expose(),
        owned_aes = owned.encoding_aes_key.expose(),
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
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let handler_listener =
        std::net::TcpListener::bind(any_port).map_err(|source| DemoError::Bind { addr: any_port, source })?;
    handler_listener.set_nonblocking(true).map_err(|source| DemoError::Bind { addr: any_port, source })?;
    let handler_addr = handler_listener.local_addr().map_err(|source| DemoError::Bind { addr: any_port, source })?;
    let config = gateway_config(opts, &sandbox_config, handler_addr)?;
    let listener = sandbox_socket.into_std();
    let tour_opts = opts.clone();
    // The sandbox's runtime lives as long as the process: it is not dropped when the gateway
    // stops, the process exits.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the sandbox");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a bound listener");
            let handler_listener = tokio::net::TcpListener::from_std(handler_listener).expect("a bound listener");
            let heard = Heard::default();
            tokio::spawn(demo_handler(handler_listener, heard.clone()));
            tour(sandbox_config, listener, &tour_opts, &heard).await;
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

/// The mini programs the demo authorizes for its release job.
const DEMO_MINI_PROGRAMS: [&str; 2] = ["wx7777777777777777", "wx8888888888888888"];

/// Starts the sandbox once the gateway listens (its first act is a ticket push), walks the
/// gateway through an authorization, then prints what to try. The sandbox runs on after.
async fn tour(config: SandboxConfig, listener: tokio::net::TcpListener, opts: &DemoOptions, heard: &Heard) {
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
    // Two mini programs for the release job the instructions show (the demo account is an
    // official account, whose code WeChat does not manage).
    for mini in DEMO_MINI_PROGRAMS {
        let mini = AppId::parse(mini).expect("a valid demo appid");
        sandbox.issue_auth_code(&mini);
        sandbox.set_account(&mini, 1, true);
        if let Err(e) = sandbox.authorize(&mini).await {
            eprintln!("wxgate demo: the demo mini program's authorization failed: {e}");
        }
    }
    let event = format!("authorized {demo_account}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !heard.has(&event) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !heard.has(&event) {
        eprintln!("wxgate demo: the events route did not hear of the authorization; see the log above");
        return;
    }
    say(&instructions(opts, &demo_account));
    heard.printing();
}

/// Prints to stdout; a closed stdout (`wxgate demo | head`) must not take the sandbox down.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// What the demo's events route heard (`InfoType appid`), printed as it comes once the tour
/// has printed its lines.
#[derive(Clone, Default)]
struct Heard(std::sync::Arc<std::sync::Mutex<(Vec<String>, bool)>>);

impl Heard {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, event: String, delivery: &str) {
        let mut heard = self.lock();
        if heard.1 {
            say(&format!("demo events route heard: {event} (X-Wxgate-Delivery {delivery})"));
        }
        heard.0.push(event);
    }

    fn has(&self, event: &str) -> bool {
        self.lock().0.iter().any(|e| e == event)
    }

    fn printing(&self) {
        self.lock().1 = true;
    }
}

/// A handler as an app would write it for an official account in plaintext mode: check
/// `signature` (sha1 of the sorted token, timestamp, nonce), read the XML, answer a text.
async fn demo_handler(listener: tokio::net::TcpListener, heard: Heard) {
    use axum::http::{HeaderMap, StatusCode, Uri};
    fn verified(uri: &Uri, body: &str) -> Result<crate::xml::Fields, (StatusCode, String)> {
        let q: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        let expected = crate::messages::handler::plain_signature(DEMO_HANDLER_TOKEN, get("timestamp"), get("nonce"));
        if expected != get("signature") {
            return Err((StatusCode::FORBIDDEN, "bad signature".to_owned()));
        }
        crate::xml::parse(body).map_err(|_| (StatusCode::BAD_REQUEST, "not XML".to_owned()))
    }
    async fn answer(uri: Uri, body: String) -> (StatusCode, String) {
        let fields = match verified(&uri, &body) {
            Ok(fields) => fields,
            Err(refused) => return refused,
        };
        let said = fields.get("Content").unwrap_or_default();
        let reply =
            crate::messages::release_check::text_reply(&fields, &format!("you said: {said}"), crate::store::unix_now());
        (StatusCode::OK, reply)
    }
    let platform_event = move |uri: Uri, headers: HeaderMap, body: String| {
        let heard = heard.clone();
        async move {
            if let Err(refused) = verified(&uri, &body) {
                return refused;
            }
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let event = format!("{} {}", header("x-wxgate-info-type"), header("x-wxgate-authorizer"));
            heard.add(event, &header("x-wxgate-delivery"));
            (StatusCode::OK, "success".to_owned())
        }
    };
    let app = axum::Router::new()
        .route("/wechat", axum::routing::post(answer))
        .route("/platform-events", axum::routing::post(platform_event));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("wxgate demo: the demo handler stopped: {e}");
    }
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
Demo account {account} has authorized, and the demo's events route heard `authorized {account}`.
Try:

  # call WeChat's API through the gateway as an unchanged SDK would: the client key stands
  # where the access token goes, the account's appid prefixes the path
  curl -s 'http://{proxy}/{account}/cgi-bin/user/info?openid=o1&access_token={DEMO_CLIENT_KEY}'
  curl -s -X POST -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' http://{proxy}/{account}/cgi-bin/message/custom/send \\
       -d '{{\"touser\":\"o1\",\"msgtype\":\"text\",\"text\":{{\"content\":\"hi\"}}}}'

  # WeChat invalidates the token behind the gateway's back: the next call is replayed with a new one
  curl -s -X POST 'http://{sandbox}/sandbox/revoke?appid={account}'
  curl -s 'http://{proxy}/{account}/cgi-bin/user/info?openid=o1&access_token={DEMO_CLIENT_KEY}'

  # WeChat pushes a user's text to the message URL (/wxgate/callback/$APPID$); the gateway
  # verifies and decrypts it, the demo handler answers in plaintext mode, and the sandbox
  # shows the encrypted passive reply it got, decrypted
  curl -s -X POST 'http://{sandbox}/sandbox/message?appid={account}&type=text&content=hello'

  # WeChat's whole release check (全网发布) against the gateway, for one of its test accounts
  curl -s -X POST 'http://{sandbox}/sandbox/release-check?appid=wx570bc396a51b8ff8'

  # the raw token, for clients with reveal_tokens (a JS-SDK signer, a central token server)
  curl -s -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' http://{proxy}/wxgate/token/{account}

  # the company's own account {owned} (by AppSecret, [[accounts]]): called the same way, its
  # token kept with stable_token; /cgi-bin/stable_token is answered from the gateway's cache
  curl -s 'http://{proxy}/{owned}/cgi-bin/user/info?openid=o1&access_token={DEMO_CLIENT_KEY}'
  curl -s -X POST -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' http://{proxy}/cgi-bin/stable_token \
       -d '{{\"grant_type\":\"client_credential\",\"appid\":\"{owned}\"}}'
  curl -s {bearer} http://{admin}/admin/accounts
  # its own message server, in safe mode: WeChat's URL check, then a user's text
  curl -s -X POST http://{sandbox}/sandbox/account-urlcheck -d '{{\"appid\":\"{owned}\"}}'
  curl -s -X POST http://{sandbox}/sandbox/account-message -d '{{\"appid\":\"{owned}\",\"mode\":\"safe\",\"type\":\"text\",\"content\":\"hello\"}}'

  # the gateway is ready, and what it holds (never a token)
  curl -s http://{admin}/readyz
  curl -s {bearer} http://{admin}/admin/component
  curl -s {bearer} http://{admin}/admin/authorizers

  # another owner authorizes (the sandbox pushes `authorized`; the gateway exchanges the code,
  # then the demo's [[events.routes]] handler hears of it: watch this terminal)
  curl -s -X POST 'http://{sandbox}/sandbox/authorize?appid=wx2222222222222222'
  curl -s {bearer} http://{admin}/admin/authorizers/wx2222222222222222

  # fast-register a mini program through the gateway: WeChat pushes notify_third_fasteregister,
  # the gateway adopts the new mini program, then the events route hears of it
  curl -s -X POST -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' \
       'http://{proxy}/component/cgi-bin/component/fastregisterweapp?action=create' \
       -d '{{\"name\":\"Demo Shop\",\"code\":\"91440300MA5DEMO\",\"code_type\":1,\"legal_persona_wechat\":\"demoboss\",\"legal_persona_name\":\"Li\"}}'
  curl -s {bearer} http://{admin}/admin/events

  # release a code template to the demo's mini programs as one job (commit, audit, verdict,
  # release; the sandbox's audits take a few seconds, some are postponed), then watch it
  curl -s -X POST {bearer} http://{admin}/admin/releases \\
       -d '{{\"template_id\":42,\"user_version\":\"1.0.0\",\"ext_json\":{{\"extAppid\":\"$APPID$\"}},\"authorizers\":[\"wx7777777777777777\",\"wx8888888888888888\"]}}'
  curl -s {bearer} http://{admin}/admin/releases

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
        owned = crate::sandbox::DEMO_OWNED_APPID,
    )
}
