//! Configuration: the TOML file and `WXGATE_*` environment, validated once into [`Config`].
//!
//! The pipeline is `text → toml::Table` (syntax) `→ env overrides applied` ([`env`]) `→ file
//! schema` ([`file`], every unknown key and ill-typed value reported, not just the first) `→
//! Config` ([`validate`], every bad value reported). Whatever passes is a `Config` whose fields
//! cannot be wrong later: appids are [`AppId`]s, addresses are parsed, secrets are [`Secret`]s.

mod accounts;
mod egress;
mod env;
mod file;
mod masked;
pub mod reload;
mod rules;
mod tls;
mod validate;

pub use accounts::AccountConfig;
pub use egress::{CaFile, EgressProxy};
pub use tls::ListenerTls;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::appid::AppId;
use crate::secret::Secret;

pub const DEFAULT_UPSTREAM_BASE_URL: &str = "https://api.weixin.qq.com";
/// The fallback when `upstream.base_url` is WeChat's own host and `fallback_urls` is not set.
pub const DEFAULT_UPSTREAM_FALLBACK_URL: &str = "https://api2.weixin.qq.com";
pub const WECHAT_API_HOST: &str = "api.weixin.qq.com";
pub const DEFAULT_PROXY_MAX_BODY_BYTES: u64 = 64 << 20;
pub const DEFAULT_PROXY_REPLAY_BODY_BYTES: u64 = 1 << 20;
/// nginx's `keepalive_timeout` and `client_header_timeout`.
pub const DEFAULT_PROXY_KEEPALIVE_TIMEOUT_SECS: u64 = 75;
pub const DEFAULT_PROXY_HEADER_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_UPSTREAM_MP_BASE_URL: &str = "https://mp.weixin.qq.com";
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_LISTEN_PROXY: &str = "0.0.0.0:8080";
pub const DEFAULT_LISTEN_ADMIN: &str = "127.0.0.1:9090";
pub const DEFAULT_STORE_BACKEND: &str = "sqlite";
pub const DEFAULT_STORE_PATH: &str = "data/wxgate.sqlite3";
pub const DEFAULT_STORE_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_STORE_KEY_PREFIX: &str = "wxgate:";
pub const DEFAULT_STORE_REDIS_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_STORE_REDIS_WAIT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_REFRESH_AHEAD_SECS: u64 = 600;
pub const DEFAULT_REFRESH_RECONCILE_HOURS: u64 = 24;
pub const DEFAULT_SERVER_SHUTDOWN_GRACE_SECS: u64 = 5;
pub const DEFAULT_MESSAGES_REPLY_TIMEOUT_MS: u64 = 4000;
pub const DEFAULT_MESSAGES_MAX_AGE_HOURS: u64 = 72;
/// WeChat usually pushes its audit verdict; a release job asks after this silence.
pub const DEFAULT_RELEASES_AUDIT_POLL_SECS: u64 = 1800;
/// Environment variables that start with `WXGATE_` but are not config keys.
pub const NON_KEY_ENV_VARS: [&str; 2] = ["WXGATE_CONFIG", "WXGATE_LOG"];

/// The validated configuration. Built only by [`Config::load`] or [`Config::from_sources`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The third-party platform; `None` for a gateway of owned accounts only.
    pub component: Option<ComponentConfig>,
    /// `[[accounts]]`: accounts the company owns, by appid and AppSecret.
    pub accounts: Vec<AccountConfig>,
    /// Whose keys the store's records and leases are under: the platform's appid, or without a
    /// platform the first owned account's. Nothing kept under it outlives a change of it but a
    /// day's quota counts: an owned account's token is kept under its own appid.
    pub namespace: AppId,
    pub upstream: UpstreamConfig,
    pub listen: ListenConfig,
    pub store: StoreConfig,
    pub refresh: RefreshConfig,
    pub admin: AdminConfig,
    pub proxy: ProxyConfig,
    pub server: ServerConfig,
    pub clients: Vec<ClientConfig>,
    pub messages: MessagesConfig,
    pub events: EventsConfig,
    pub quota: QuotaConfig,
    pub releases: ReleasesConfig,
}

/// The third-party platform itself. `encoding_aes_key` is known to decode to 32 bytes.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    pub appid: AppId,
    pub appsecret: Secret,
    pub token: Secret,
    pub encoding_aes_key: Secret,
}

/// Where WeChat's API is. `base_url` is http(s), has a host, no query or fragment, and its path
/// ends with `/`, so `base_url.join("cgi-bin/...")` keeps any path prefix.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub base_url: url::Url,
    /// Where the authorization pages are (`mp.weixin.qq.com`); the sandbox serves its own.
    pub mp_base_url: url::Url,
    /// Tried in order when `base_url` cannot be connected to (e.g. api2.weixin.qq.com).
    pub fallback_urls: Vec<url::Url>,
    pub timeout: Duration,
    /// `upstream.ca_file`: extra CAs trusted for HTTPS upstreams besides the built-in roots.
    pub ca_file: Option<CaFile>,
    /// `upstream.proxy`: the forward proxy every call to WeChat leaves through.
    pub proxy: Option<EgressProxy>,
}

/// The two listeners. `public_base_url` is how browsers and WeChat reach `proxy`; like
/// `upstream.base_url`, its path ends with `/`.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub public_base_url: url::Url,
    /// `listen.tls_cert` and `tls_key`: the proxy listener speaks HTTPS with this pair.
    pub tls: Option<ListenerTls>,
}

/// The durable store, with only the settings of the chosen backend.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Sqlite {
        path: PathBuf,
    },
    /// `url` is `redis://`, `rediss://` or `redis+sentinel://` and may carry a password.
    Redis {
        url: Secret,
        key_prefix: String,
        options: crate::store::RedisOptions,
    },
    Memory,
}

#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// Refresh a token this long before it expires (60 s ..= 1 h).
    pub ahead: Duration,
    /// `reconcile_hours`: reconcile with WeChat's authorizer list this often, and at start-up;
    /// `None` (0) never.
    pub reconcile_every: Option<Duration>,
    /// Calls a minute one credential may make to its WeChat token endpoint (1 ..= 600).
    pub budget_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; at least 16 characters.
    pub token: Secret,
}

/// Process settings beyond the contract.
/// How API calls are proxied.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// A larger request body is refused with 413.
    pub max_body_bytes: usize,
    /// Bodies up to this size are kept so that a call can be replayed after a token error;
    /// larger ones (media uploads) stream through and are not replayed.
    pub replay_body_bytes: usize,
    /// One log line per call, with token and key values redacted.
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// A client connection idle this long between requests is closed.
    pub keepalive_timeout: Duration,
    /// A request head (request line and headers) must arrive whole within this, counted from
    /// the connection's start or from the head's first byte on a kept-alive connection.
    pub header_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads, 1 ..= 256; defaults to the available parallelism.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// An app allowed to send API calls through the gateway. Names and keys are unique.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub key: Secret,
    pub authorizers: AuthorizerScope,
    pub component: bool,
    pub reveal_tokens: bool,
    /// Calls a second at most (bursts up to twice that); `None`: no limit.
    pub rate_per_second: Option<f64>,
    /// Of each account's daily quota for one API, the share this client may use (0 < x <= 1).
    pub daily_share: Option<f64>,
}

/// `[quota]`.
/// `[releases]`: release jobs.
#[derive(Debug, Clone)]
pub struct ReleasesConfig {
    /// Ask WeChat for an audit's status after this long without its verdict.
    pub audit_poll: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Answer an (account, API) WeChat said 45009 for at the gateway until Beijing midnight.
    pub guard: bool,
}

/// Which authorizers a client may act for: `["*"]` in the file is `All`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizerScope {
    All,
    /// Sorted and without duplicates; may be empty.
    Only(Vec<AppId>),
}

impl AuthorizerScope {
    pub fn allows(&self, appid: &AppId) -> bool {
        match self {
            Self::All => true,
            Self::Only(appids) => appids.binary_search(appid).is_ok(),
        }
    }
}

/// `[messages]`: the authorized accounts' messages and where they go.
#[derive(Debug, Clone)]
pub struct MessagesConfig {
    /// How long a reply-mode handler may take (100 ms ..= 4.5 s: WeChat waits 5 s).
    pub reply_timeout: Duration,
    /// How long an undelivered message is retried before it is kept as failed.
    pub max_age: Duration,
    /// Answer WeChat's release-check test accounts in the gateway itself.
    pub release_check: bool,
    /// First match wins. Names are unique.
    pub routes: Vec<RouteConfig>,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            reply_timeout: Duration::from_millis(DEFAULT_MESSAGES_REPLY_TIMEOUT_MS),
            max_age: Duration::from_secs(DEFAULT_MESSAGES_MAX_AGE_HOURS * 3600),
            release_check: true,
            routes: Vec::new(),
        }
    }
}

/// `[events]`: where the authorization-event URL's events go once the gateway acted on them.
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    /// Every matching route gets each event. Names are unique, among message routes too.
    pub routes: Vec<EventRouteConfig>,
}

/// One `[[events.routes]]`: which platform events, to which handler.
#[derive(Debug, Clone)]
pub struct EventRouteConfig {
    /// Letters, digits, `-` and `_`: a metric label, stored with each event in the outbox.
    pub name: String,
    /// InfoType values; `None` matches all (`component_verify_ticket` is never handed on).
    pub info_types: Option<Vec<String>>,
    pub url: url::Url,
    /// The handler's own WeChat token, for the plaintext-mode `signature`.
    pub token: Secret,
}

/// One `[[messages.routes]]`: which messages, to which handler, how.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Letters, digits, `-` and `_`: it is a metric label and is stored with each message.
    pub name: String,
    pub authorizers: AuthorizerScope,
    /// MsgType values; `None` matches all.
    pub msg_types: Option<Vec<String>>,
    /// Event values of MsgType `event`; `None` matches all.
    pub events: Option<Vec<String>>,
    /// The handler; its own query is kept and WeChat's parameters appended.
    pub url: url::Url,
    /// The handler's own WeChat token, for the plaintext-mode `signature`.
    pub token: Secret,
    pub mode: DeliveryMode,
}

/// How the access log writes its lines (`proxy.access_log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` after the time and `INFO wxgate::access:`, as the other log lines.
    Text,
    /// One JSON object per line, for Loki or ELK.
    Json,
}

impl AccessLogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// How a route hands a message over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Called while WeChat waits; its answer becomes the passive reply.
    Reply,
    /// Committed to the outbox, answered `success`, delivered with retries.
    Deliver,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Deliver => "deliver",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with the configuration. `key` is `section.key` (`clients[1].key` for a
/// client), a section, the variable's name when a `WXGATE_*` variable names no key, or `file`
/// for a syntax error on a line without a key. Neither part ever holds a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn display_lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl Config {
    /// Reads the file at `path` and the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_reloadable(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with what a SIGHUP reload compares the file's next version against.
    pub fn load_reloadable(path: &Path) -> Result<(Config, reload::Source), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let (config, keys) = Self::from_sources_with_keys(&text, env::process_vars())?;
        Ok((config, reload::Source::new(path.to_owned(), keys)))
    }

    /// Builds the configuration from the file's text and `(name, value)` environment pairs;
    /// environment values win. Reports every problem found, not just the first.
    pub fn from_sources(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_sources_with_keys(toml_text, env).map(|(config, _)| config)
    }

    /// [`Config::from_sources`], with every key the file and the environment set.
    fn from_sources_with_keys(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, reload::Keys), ConfigError> {
        let mut problems = Problems::default();
        let Some(mut table) = file::parse(toml_text, &mut problems) else {
            return Err(problems.into_error(&env::Origins::new()));
        };
        let from_env = env::apply(&mut table, env, &mut problems);
        let keys = reload::Keys::of(&table);
        let schema = file::read(table, &mut problems);
        match validate::config(&schema, &mut problems) {
            Some(config) if problems.is_empty() => Ok((config, keys)),
            _ => Err(problems.into_error(&from_env)),
        }
    }

    /// The effective configuration as TOML, with every secret printed as `"..."`.
    pub fn masked(&self) -> String {
        masked::masked(self)
    }
}

/// Collects problems, one per key: the first found for a key (say, a wrong type) explains the
/// later ones (say, "is required" once the ill-typed value was set aside), and a problem with a
/// whole section (`component: must be a table`) explains those of its keys.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if !self.0.iter().any(|p| covers(&p.key, &key)) {
            self.0.push(Problem { key, message: message.into() });
        }
    }

    /// Records `result`'s error under `key` and turns the result into an `Option`.
    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.push(key, message)).ok()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Groups the problems by section, in the file's order, and names the variable behind each
    /// one whose value came from the environment.
    fn into_error(mut self, from_env: &env::Origins) -> ConfigError {
        self.0.sort_by_key(|p| order(&p.key));
        for p in &mut self.0 {
            if let Some(var) = from_env.get(&p.key) {
                p.message = format!("{} (set by {var})", p.message);
            }
        }
        ConfigError::Invalid(self.0)
    }
}

/// Where a key's problem is listed: by section as documented, then by client; anything else
/// (unknown sections and variables) last, in the order found.
fn order(key: &str) -> (usize, usize) {
    let head = key.split(['.', '[']).next().unwrap_or(key);
    let section = file::SECTIONS.iter().position(|s| *s == head).unwrap_or(file::SECTIONS.len());
    let client = key
        .strip_prefix("clients[")
        .or_else(|| key.strip_prefix("accounts["))
        .or_else(|| key.strip_prefix("messages.routes["))
        .or_else(|| key.strip_prefix("events.routes["))
        .and_then(|rest| rest.split(']').next()?.parse().ok());
    (section, client.unwrap_or(0))
}

/// True when a problem with `earlier` makes one with `key` redundant: the same key, or a key
/// inside it (`component` covers `component.appid`, `clients[1]` covers `clients[1].key`).
fn covers(earlier: &str, key: &str) -> bool {
    key.strip_prefix(earlier).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appid(s: &str) -> AppId {
        AppId::parse(s).unwrap()
    }

    #[test]
    fn scope_allows_listed_or_all() {
        let only = AuthorizerScope::Only(vec![appid("wx1111111111111111"), appid("wx2222222222222222")]);
        assert!(only.allows(&appid("wx2222222222222222")));
        assert!(!only.allows(&appid("wx3333333333333333")));
        assert!(AuthorizerScope::All.allows(&appid("wx3333333333333333")));
        assert!(!AuthorizerScope::Only(vec![]).allows(&appid("wx1111111111111111")));
    }

    #[test]
    fn keeps_one_problem_per_key_and_names_env_origin() {
        let mut problems = Problems::default();
        problems.push("admin.token", "must be at least 16 characters");
        problems.push("admin.token", "is required");
        problems.push("server.threads", "must be between 1 and 256");
        problems.push("clients[1]", "must be a table");
        problems.push("clients[1].name", "is required");
        problems.push("clients[10].name", "is required");
        let origins = env::Origins::from([("server.threads".to_owned(), "WXGATE_SERVER_THREADS".to_owned())]);
        let text = problems.into_error(&origins).to_string();
        assert_eq!(
            text,
            "admin.token: must be at least 16 characters\n\
             server.threads: must be between 1 and 256 (set by WXGATE_SERVER_THREADS)\n\
             clients[1]: must be a table\n\
             clients[10].name: is required"
        );
    }
}
