//! The one place that wires the store, the token service and the pingora services together.

use crate::admin::AdminApp;
use crate::authorize::AuthorizeLinks;
use crate::callback::{AccountReceiver, Admission, ComponentReceiver, OwnServer};
use crate::config::reload::{Live, Source};
use crate::config::{AccountConfig, Config, StoreConfig};
use crate::crypto::{CryptoError, MsgCrypt};
use crate::events::routes::EventRoutes;
use crate::events::{Deliveries, PlatformEvents};
use crate::http1::{Edge, Timeouts};
use crate::listeners::{Certificate, ListenError, Prebound, Sockets};
use crate::messages::handler::HandlerClient;
use crate::messages::outbox::{Deliver, Outbox, OutboxSettings};
use crate::messages::release_check::ReleaseCheck;
use crate::messages::{MessageService, Settings as MessageSettings};
use crate::metrics;
use crate::proxy::{Clients, Gateway, Upstream, UpstreamError};
use crate::quota::{FromWechat, QuotaGuard};
use crate::releases::{Releases, Settings as ReleaseSettings};
use crate::routes::GatewayRoutes;
use crate::store::{MemoryStore, RedisStore, SharedStore, SqliteStore, StoreError};
use crate::tokens::{Holders, Settings, TokenError, TokenService};
use crate::wechat::{ComponentApi, WechatClient, WechatError};
use crate::AppId;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::server::{RunArgs, Server};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("component crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("WeChat client: {0}")]
    Wechat(#[from] WechatError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("handler HTTP client: {0}")]
    Handler(#[from] reqwest::Error),
    #[error("start-up runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Opens the configured store; the SQLite file is created if missing. Runs on the store
/// runtime, where a Redis store keeps its connection and its change listener.
pub async fn open_store(config: &StoreConfig, component: &crate::AppId) -> Result<SharedStore, AppError> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path)?)),
        StoreConfig::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreConfig::Redis { url, key_prefix, options } => {
            Ok(Arc::new(RedisStore::connect(url, key_prefix, component, options).await?))
        }
    }
}

/// The runtime that owns the store's connections and the token service's follow-up tasks for
/// the life of the process. pingora builds its own runtimes only in `run`, and a runtime made
/// just to load the state would take a Redis connection's driver with it when dropped.
fn store_runtime() -> Result<&'static tokio::runtime::Runtime, AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wxgate-store")
        .enable_all()
        .build()?;
    Ok(Box::leak(Box::new(rt)))
}

/// Builds the server on both listeners, ready to run. With a `source` (the config came from a
/// file), SIGHUP reloads the parts [`Live`] holds.
pub fn build(config: &Config, source: Option<Source>, sockets: Sockets) -> Result<Server, AppError> {
    metrics::init();
    let rt = store_runtime()?;
    let namespace = config.namespace;
    let store = rt.block_on(open_store(&config.store, &namespace))?;
    let client = Arc::new(WechatClient::new(
        config.upstream.base_url.clone(),
        config.upstream.timeout,
        namespace,
        config.component.as_ref().map(|c| c.appsecret.clone()),
        config.upstream.ca_file.as_ref().map_or(&[][..], |ca| &ca.certs[..]),
        config.upstream.proxy.as_ref().map(|p| &p.url),
    )?);
    let api: Arc<dyn ComponentApi> = Arc::clone(&client) as _;
    let tokens = load_tokens(rt, config, Arc::clone(&store), api)?;
    let crypt = match &config.component {
        Some(c) => Some(MsgCrypt::new(&c.token, &c.encoding_aes_key, &c.appid.as_str())?),
        None => None,
    };
    let links =
        AuthorizeLinks::new(namespace, config.upstream.mp_base_url.clone(), config.listen.public_base_url.clone());
    // What a SIGHUP may replace; see config::reload for how to add a part.
    let mut live = Live::new(source);
    let message_settings = live.part(config, |c| MessageSettings::new(&c.messages));
    let outbox_settings = OutboxSettings { max_age: config.messages.max_age, ..OutboxSettings::default() };
    let outbox = Outbox::new(namespace, Arc::clone(&store), outbox_settings);
    let handler = Arc::new(HandlerClient::new(Arc::clone(&message_settings))?);
    let event_routes = live.part(config, |c| EventRoutes::new(&c.events.routes));
    let events = Arc::new(PlatformEvents::new(event_routes, Arc::clone(&outbox)));
    tokens.events().hand_to(Arc::clone(&events) as _);
    let deliveries: Arc<dyn Deliver> = Arc::new(Deliveries { handler: Arc::clone(&handler), events });
    let release = Arc::new(ReleaseCheck::new(Arc::clone(&tokens), Arc::clone(&client) as _));
    let release_settings = ReleaseSettings::new(config.releases.audit_poll, config.upstream.timeout);
    let releases = Arc::new(Releases::new(
        namespace,
        Arc::clone(&store),
        Arc::clone(&tokens),
        Arc::clone(&client) as _,
        release_settings,
    ));
    let messages = Arc::new(
        MessageService::new(message_settings, Arc::clone(&outbox), Arc::clone(&handler) as Arc<HandlerClient>, release)
            .with_releases(Arc::clone(&releases)),
    );
    let routes = Arc::new(GatewayRoutes {
        accounts: AccountReceiver::new(crypt.clone(), own_servers(&config.accounts)?, messages),
        callback: crypt.map(|crypt| ComponentReceiver::new(crypt, Arc::clone(&tokens))),
        admission: Admission::default(),
        tokens: Arc::clone(&tokens),
        links: links.clone(),
    });

    let mut server = Server::new_with_opt_and_conf(None, server_conf(config));
    server.bootstrap();

    let extra_roots = config.upstream.ca_file.as_ref().map_or(&[][..], |ca| &ca.certs[..]);
    let upstream = Upstream::through(
        &config.upstream.base_url,
        &config.upstream.fallback_urls,
        config.upstream.timeout,
        config.upstream.proxy.as_ref(),
    )?
    .with_extra_roots(extra_roots)?;
    let upstream = Arc::new(upstream);
    let limits = Arc::new(FromWechat { tokens: Arc::clone(&tokens), wechat: Arc::clone(&client) as _ });
    let guard = QuotaGuard::new(namespace, Arc::clone(&store), &config.quota, limits);
    let guarded = Arc::clone(&guard);
    let clients = live.part(config, move |c| {
        guarded.configure(&c.quota);
        Clients::guarded(&c.clients, &guarded)
    });
    let admin_token = live.part(config, |c| c.admin.token.clone());
    let gateway =
        Gateway::new(routes, Arc::clone(&tokens), clients, upstream, Arc::clone(&guard), config.proxy.clone());
    let timeouts = Timeouts { keepalive: config.proxy.keepalive_timeout, header: config.proxy.header_timeout };
    let proxy = Service::new("wxgate proxy".to_owned(), Edge::new(gateway, timeouts));
    // HTTPS on the proxy listener: the pair a reload reads replaces the one handshakes present.
    let certificate = config.listen.tls.as_ref().map(|tls| Certificate::new(Arc::clone(&tls.key)));
    if let Some(certificate) = &certificate {
        let certificate = Arc::clone(certificate);
        live.part(config, move |c| {
            if let Some(tls) = &c.listen.tls {
                certificate.replace(Arc::clone(&tls.key));
            }
        });
    }
    server.add_service(Prebound::serving(proxy, sockets.proxy, certificate));

    // The admin listener is served by the same HTTP/1.1 as the proxy listener.
    let admin_app = AdminApp::new(Arc::clone(&tokens), links, admin_token, client)
        .with_outbox(Arc::clone(&outbox))
        .with_guard(Arc::clone(&guard))
        .with_releases(Arc::clone(&releases));
    let admin = Service::new("wxgate admin".to_owned(), Edge::new(admin_app, timeouts));
    server.add_service(Prebound::new(admin, sockets.admin));

    server.add_service(background_service("wxgate token scheduler", Scheduler(tokens)));
    server.add_service(background_service("wxgate message outbox", OutboxWorker(outbox, deliveries)));
    server.add_service(background_service("wxgate quota sync", QuotaSync(guard)));
    server.add_service(background_service("wxgate release jobs", ReleaseDriver(releases)));
    if live.has_file() {
        Arc::new(live).reload_on_sighup(rt)?;
    }
    Ok(server)
}

/// Runs until SIGTERM (graceful, `server.shutdown_grace_secs`) or SIGINT (at once); SIGHUP
/// reloads the file `source` names.
pub fn run(config: &Config, source: Option<Source>) -> Result<(), AppError> {
    run_on(config, source, Sockets::take(&config.listen)?)
}

/// [`run`] on sockets already taken (the demo needs their addresses for its config).
pub fn run_on(config: &Config, source: Option<Source>, sockets: Sockets) -> Result<(), AppError> {
    let (proxy, admin) = (sockets.proxy.addr, sockets.admin.addr);
    let server = build(config, source, sockets)?;
    tracing::info!(
        %proxy,
        %admin,
        store = store_name(&config.store),
        component = %config.component.as_ref().map_or_else(|| "none".to_owned(), |c| c.appid.to_string()),
        owned_accounts = config.accounts.len(),
        "wxgate starting"
    );
    server.run(RunArgs { shutdown_signal: Box::new(Signals) });
    Ok(())
}

/// SIGTERM: pingora's graceful stop. SIGINT: exit now. pingora's own quick stop shuts its
/// runtimes down with the listeners still accepting, and its accept loop then spins on the
/// "runtime is shutting down" error without yielding, so a worker thread never exits and the
/// process hangs (seen as `wxgate demo` outliving Ctrl-C under load). Nothing is lost by exiting:
/// every write is durable before it is acknowledged.
struct Signals;

#[async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot listen for SIGTERM and SIGINT; stopping");
            return pingora::server::ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => pingora::server::ShutdownSignal::GracefulTerminate,
            _ = int.recv() => {
                tracing::info!("SIGINT received, exiting");
                std::process::exit(0)
            }
        }
    }
}

/// Loads the token service's state before the server starts, on a runtime of its own: pingora
/// creates its runtimes only in `run`.
fn load_tokens(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    store: SharedStore,
    api: Arc<dyn ComponentApi>,
) -> Result<Arc<TokenService>, AppError> {
    let settings = Settings {
        // A lease outlasts a call to WeChat (bounded by the upstream timeout) and the write after.
        lease_ttl: config.upstream.timeout + std::time::Duration::from_secs(5),
        // A request waits for a peer's refresh and then makes its own call: both fit in the
        // upstream timeout.
        peer_wait: config.upstream.timeout / 2,
        reconcile_every: config.refresh.reconcile_every,
        budget_per_minute: config.refresh.budget_per_minute,
        ..Settings::new(config.refresh.ahead)
    };
    let changes = store.changes();
    let holders = Holders {
        namespace: config.namespace,
        platform: config.component.is_some(),
        owned: config.accounts.iter().map(|a| (a.appid, a.secret.clone())).collect(),
    };
    let tokens = rt.block_on(TokenService::load_for(holders, store, api, settings))?;
    if let Some(changes) = changes {
        rt.spawn(Arc::clone(&tokens).follow_changes(changes));
    }
    tracing::info!(authorizers = tokens.authorizers().count(), "token state loaded from the store");
    Ok(tokens)
}

/// The owned accounts that have a message server (`token`), by appid.
fn own_servers(accounts: &[AccountConfig]) -> Result<HashMap<AppId, OwnServer>, AppError> {
    let mut servers = HashMap::new();
    for account in accounts {
        let Some(token) = &account.token else { continue };
        let crypt = match &account.encoding_aes_key {
            Some(key) => Some(MsgCrypt::new(token, key, &account.appid.as_str())?),
            None => None,
        };
        servers.insert(account.appid, OwnServer { token: token.clone(), crypt });
    }
    Ok(servers)
}

/// The release jobs' driver, run by pingora as a background service.
struct ReleaseDriver(Arc<Releases>);

#[async_trait]
impl BackgroundService for ReleaseDriver {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run(shutdown).await;
    }
}

/// The token service's refresh scheduler, run by pingora as a background service so that it
/// shares the server's shutdown.
struct Scheduler(Arc<TokenService>);

#[async_trait]
impl BackgroundService for Scheduler {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run_scheduler(shutdown).await;
    }
}

/// The quota guard's exchange with a shared store (counts out, holds in), every second.
struct QuotaSync(Arc<QuotaGuard>);

#[async_trait]
impl BackgroundService for QuotaSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run(shutdown).await;
    }
}

/// The outbox's delivery loop, with its messages' and events' handlers as its `Deliver`.
struct OutboxWorker(Arc<Outbox>, Arc<dyn Deliver>);

#[async_trait]
impl BackgroundService for OutboxWorker {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run(Arc::clone(&self.1), shutdown).await;
    }
}

fn server_conf(config: &Config) -> ServerConf {
    let grace = config.server.shutdown_grace.as_secs();
    ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        // pingora's defaults live in /tmp and would collide between instances on one machine;
        // wxgate does not use pingora's zero-downtime upgrade.
        pid_file: String::new(),
        upgrade_sock: String::new(),
        // Each worker its own single-threaded runtime: a proxied call stays on the thread that
        // accepted it (6–12 % more calls per core in benches/proxy).
        work_stealing: false,
        ..ServerConf::default()
    }
}

fn store_name(config: &StoreConfig) -> &'static str {
    match config {
        StoreConfig::Sqlite { .. } => "sqlite",
        StoreConfig::Redis { .. } => "redis",
        StoreConfig::Memory => "memory",
    }
}
