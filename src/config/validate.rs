//! Checks every value of the file schema once, turning it into [`Config`] and reporting every
//! bad value under its key, without ever quoting a secret.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::file::{
    ClientFile, ComponentFile, EventRouteFile, EventsFile, FileConfig, ListenFile, MessagesFile, RouteFile, StoreFile,
};
use super::rules::{aes_key, appid, message_token, secret_of_length};
use super::*;
use crate::store::{parse_sentinel_url, RedisOptions, SENTINEL_SCHEME};

/// The whole configuration, or `None` when any part is bad (every problem is in `p`).
pub(super) fn config(f: &FileConfig, p: &mut Problems) -> Option<Config> {
    let component = component(&f.component, !f.accounts.is_empty(), p);
    let accounts = super::accounts::accounts(&f.accounts, f.component.appid.as_deref(), p);
    let upstream = upstream(f, p);
    let listen = listen(&f.listen, p);
    let store = store(&f.store, p);
    let refresh = p.check("refresh.ahead_secs", int_in(f.refresh.ahead_secs, DEFAULT_REFRESH_AHEAD_SECS, 60..=3600));
    let reconcile = p.check(
        "refresh.reconcile_hours",
        int_in(f.refresh.reconcile_hours, DEFAULT_REFRESH_RECONCILE_HOURS, 0..=24 * 365),
    );
    let budget = p.check(
        "refresh.budget_per_minute",
        int_in(f.refresh.budget_per_minute, crate::tokens::DEFAULT_BUDGET_PER_MINUTE.into(), 1..=600),
    );
    let admin = p.check("admin.token", required(&f.admin.token).and_then(secret_of_length(16)));
    let proxy = proxy(f, p);
    let server = server(f, p);
    let clients = clients(&f.clients, p);
    let messages = messages(&f.messages, p);
    let events = events(&f.events, &f.messages, p);
    let quota = QuotaConfig { guard: f.quota.guard.unwrap_or(true) };
    let default_poll = DEFAULT_RELEASES_AUDIT_POLL_SECS;
    let audit_poll = p.check("releases.audit_poll_secs", int_in(f.releases.audit_poll_secs, default_poll, 5..=86_400));
    let (component, accounts) = (component?, accounts?);
    let namespace = component.as_ref().map(|c| c.appid).or_else(|| accounts.first().map(|a| a.appid))?;
    Some(Config {
        component,
        accounts,
        namespace,
        upstream: upstream?,
        listen: listen?,
        store: store?,
        refresh: RefreshConfig {
            ahead: Duration::from_secs(refresh?),
            reconcile_every: Some(reconcile?).filter(|h| *h > 0).map(|h| Duration::from_secs(h * 3600)),
            budget_per_minute: budget? as u32,
        },
        admin: AdminConfig { token: admin? },
        proxy: proxy?,
        server: server?,
        clients: clients?,
        messages: messages?,
        events: events?,
        quota,
        releases: ReleasesConfig { audit_poll: Duration::from_secs(audit_poll?) },
    })
}

/// The platform; `Some(None)` when there is none, which only owned accounts allow.
fn component(f: &ComponentFile, has_accounts: bool, p: &mut Problems) -> Option<Option<ComponentConfig>> {
    let absent = f.appid.is_none() && f.appsecret.is_none() && f.token.is_none() && f.encoding_aes_key.is_none();
    if absent && has_accounts {
        return Some(None);
    }
    let appid = p.check("component.appid", required(&f.appid).and_then(appid));
    let appsecret = p.check("component.appsecret", required(&f.appsecret).and_then(secret_of_length(1)));
    let token = p.check("component.token", required(&f.token).and_then(message_token));
    let aes_key = p.check("component.encoding_aes_key", required(&f.encoding_aes_key).and_then(aes_key));
    Some(Some(ComponentConfig { appid: appid?, appsecret: appsecret?, token: token?, encoding_aes_key: aes_key? }))
}

fn upstream(f: &FileConfig, p: &mut Problems) -> Option<UpstreamConfig> {
    let base_url = or(&f.upstream.base_url, DEFAULT_UPSTREAM_BASE_URL);
    let base_url = p.check("upstream.base_url", http_url(base_url));
    let timeout = int_in(f.upstream.timeout_ms, DEFAULT_UPSTREAM_TIMEOUT_MS, 1..=120_000);
    let timeout = p.check("upstream.timeout_ms", timeout);
    let mp_base_url = or(&f.upstream.mp_base_url, DEFAULT_UPSTREAM_MP_BASE_URL);
    let mp_base_url = p.check("upstream.mp_base_url", http_url(mp_base_url));
    let fallbacks = match &f.upstream.fallback_urls {
        Some(urls) => urls.iter().map(|u| http_url(u)).collect::<Result<Vec<_>, _>>(),
        // WeChat's documented disaster-recovery host, when the primary is WeChat's own.
        None if base_url.as_ref().is_some_and(|u| u.host_str() == Some(WECHAT_API_HOST)) => {
            http_url(DEFAULT_UPSTREAM_FALLBACK_URL).map(|u| vec![u])
        }
        None => Ok(Vec::new()),
    };
    let fallback_urls = p.check("upstream.fallback_urls", fallbacks);
    let ca_file =
        f.upstream.ca_file.as_ref().map(|path| p.check("upstream.ca_file", non_blank(path).and_then(CaFile::read)));
    let proxy = f.upstream.proxy.as_ref().map(|url| p.check("upstream.proxy", EgressProxy::parse(url)));
    Some(UpstreamConfig {
        proxy: proxy.map_or(Some(None), |proxy| proxy.map(Some))?,
        base_url: base_url?,
        timeout: Duration::from_millis(timeout?),
        mp_base_url: mp_base_url?,
        fallback_urls: fallback_urls?,
        ca_file: ca_file.map_or(Some(None), |ca| ca.map(Some))?,
    })
}

fn listen(f: &ListenFile, p: &mut Problems) -> Option<ListenConfig> {
    let proxy = p.check("listen.proxy", socket_addr(or(&f.proxy, DEFAULT_LISTEN_PROXY)));
    let admin = p.check("listen.admin", socket_addr(or(&f.admin, DEFAULT_LISTEN_ADMIN)));
    if let (Some(proxy), Some(admin)) = (proxy, admin) {
        // Port 0 asks the OS for a free port, so two of them never clash.
        if proxy == admin && proxy.port() != 0 {
            p.push("listen.admin", "must differ from listen.proxy: they are two listeners");
        }
    }
    let public = p.check("listen.public_base_url", required(&f.public_base_url).and_then(http_url));
    let tls = match (&f.tls_cert, &f.tls_key) {
        (None, None) => Some(None),
        (Some(cert), Some(key)) => ListenerTls::read(cert, key).map_err(|(k, why)| p.push(k, why)).ok().map(Some),
        (Some(_), None) => p.check("listen.tls_key", Err("is required with listen.tls_cert".to_owned())),
        (None, Some(_)) => p.check("listen.tls_cert", Err("is required with listen.tls_key".to_owned())),
    };
    Some(ListenConfig { proxy: proxy?, admin: admin?, public_base_url: public?, tls: tls? })
}

/// Checks every store key that is set, not only the chosen backend's: a typo in `redis_url`
/// should not wait for the day someone switches to Redis.
fn store(f: &StoreFile, p: &mut Problems) -> Option<StoreConfig> {
    let path = p.check("store.path", non_blank(or(&f.path, DEFAULT_STORE_PATH)).map(PathBuf::from));
    let url = p.check("store.redis_url", redis_url(or(&f.redis_url, DEFAULT_STORE_REDIS_URL)));
    let prefix = p.check("store.key_prefix", non_blank(or(&f.key_prefix, DEFAULT_STORE_KEY_PREFIX)));
    let timeout = int_in(f.redis_timeout_ms, DEFAULT_STORE_REDIS_TIMEOUT_MS, 10..=60_000);
    let timeout = p.check("store.redis_timeout_ms", timeout);
    // Behind Sentinel a failover is expected, and a refresh token only the old master held would
    // be lost with it: wait for one replica unless told otherwise.
    let sentinel = url.as_ref().is_some_and(|u| u.expose().starts_with(SENTINEL_SCHEME));
    let wait_replicas = int_in(f.redis_wait_replicas, u64::from(sentinel), 0..=16);
    let wait_replicas = p.check("store.redis_wait_replicas", wait_replicas);
    let wait_timeout = int_in(f.redis_wait_timeout_ms, DEFAULT_STORE_REDIS_WAIT_TIMEOUT_MS, 10..=60_000);
    let wait_timeout = p.check("store.redis_wait_timeout_ms", wait_timeout);
    match or(&f.backend, DEFAULT_STORE_BACKEND) {
        "sqlite" => Some(StoreConfig::Sqlite { path: path? }),
        "redis" => Some(StoreConfig::Redis {
            url: url?,
            key_prefix: prefix?.to_owned(),
            options: RedisOptions {
                timeout: Duration::from_millis(timeout?),
                wait_replicas: u32::try_from(wait_replicas?).ok()?,
                wait_timeout: Duration::from_millis(wait_timeout?),
            },
        }),
        "memory" => Some(StoreConfig::Memory),
        _ => {
            p.push("store.backend", "must be \"sqlite\", \"redis\" or \"memory\"");
            None
        }
    }
}

fn proxy(f: &FileConfig, p: &mut Problems) -> Option<ProxyConfig> {
    let max_body = int_in(f.proxy.max_body_bytes, DEFAULT_PROXY_MAX_BODY_BYTES, 1..=1 << 30);
    let max_body = p.check("proxy.max_body_bytes", max_body);
    let replay = int_in(f.proxy.replay_body_bytes, DEFAULT_PROXY_REPLAY_BODY_BYTES, 0..=16 << 20);
    let replay = p.check("proxy.replay_body_bytes", replay);
    let keepalive = int_in(f.proxy.keepalive_timeout_secs, DEFAULT_PROXY_KEEPALIVE_TIMEOUT_SECS, 1..=3600);
    let keepalive = p.check("proxy.keepalive_timeout_secs", keepalive);
    let header = int_in(f.proxy.header_timeout_secs, DEFAULT_PROXY_HEADER_TIMEOUT_SECS, 1..=3600);
    let header = p.check("proxy.header_timeout_secs", header);
    let format = match f.proxy.access_log_format.as_deref() {
        None | Some("text") => Ok(AccessLogFormat::Text),
        Some("json") => Ok(AccessLogFormat::Json),
        Some(_) => Err("must be \"text\" or \"json\"".to_owned()),
    };
    let format = p.check("proxy.access_log_format", format);
    Some(ProxyConfig {
        max_body_bytes: usize::try_from(max_body?).ok()?,
        replay_body_bytes: usize::try_from(replay?).ok()?,
        access_log: f.proxy.access_log.unwrap_or(true),
        access_log_format: format?,
        keepalive_timeout: Duration::from_secs(keepalive?),
        header_timeout: Duration::from_secs(header?),
    })
}

fn server(f: &FileConfig, p: &mut Problems) -> Option<ServerConfig> {
    let threads = p.check("server.threads", int_in(f.server.threads, default_threads(), 1..=256));
    let grace = int_in(f.server.shutdown_grace_secs, DEFAULT_SERVER_SHUTDOWN_GRACE_SECS, 0..=300);
    let grace = p.check("server.shutdown_grace_secs", grace);
    Some(ServerConfig { threads: usize::try_from(threads?).ok()?, shutdown_grace: Duration::from_secs(grace?) })
}

/// One worker thread per core, as the OS reports them, within the allowed 1 ..= 256.
pub(super) fn default_threads() -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u64::try_from(cores).unwrap_or(1).clamp(1, 256)
}

fn clients(files: &[ClientFile], p: &mut Problems) -> Option<Vec<ClientConfig>> {
    let built: Vec<Option<ClientConfig>> = files.iter().enumerate().map(|(i, f)| client(i, f, p)).collect();
    duplicates(files, p);
    built.into_iter().collect()
}

fn client(i: usize, f: &ClientFile, p: &mut Problems) -> Option<ClientConfig> {
    let at = |key: &str| format!("clients[{i}].{key}");
    let name = p.check(&at("name"), required(&f.name).and_then(non_blank));
    let key = p.check(&at("key"), required(&f.key).and_then(secret_of_length(16)));
    let scope = p.check(&at("authorizers"), scope(f.authorizers.as_deref().unwrap_or_default()));
    let rate = p.check(&at("rate_per_second"), positive(f.rate_per_second, 1_000_000.0));
    let share = p.check(&at("daily_share"), positive(f.daily_share, 1.0));
    Some(ClientConfig {
        name: name?.to_owned(),
        key: key?,
        authorizers: scope?,
        component: f.component.unwrap_or(false),
        reveal_tokens: f.reveal_tokens.unwrap_or(false),
        rate_per_second: rate?,
        daily_share: share?,
    })
}

/// Unset, or a number above 0 and at most `max`.
fn positive(value: Option<f64>, max: f64) -> Result<Option<f64>, String> {
    match value {
        Some(v) if !(v > 0.0 && v <= max) => Err(format!("must be above 0 and at most {max}")),
        _ => Ok(value),
    }
}

/// Names and keys must be unique: a key identifies its client, and a name its log lines.
fn duplicates(files: &[ClientFile], p: &mut Problems) {
    for (i, f) in files.iter().enumerate() {
        let earlier = |field: fn(&ClientFile) -> &Option<String>| {
            let this = field(f).as_ref()?;
            files[..i].iter().position(|e| field(e).as_ref() == Some(this))
        };
        if let Some(j) = earlier(|c| &c.name) {
            p.push(format!("clients[{i}].name"), format!("same name as clients[{j}]"));
        }
        if let Some(j) = earlier(|c| &c.key) {
            p.push(format!("clients[{i}].key"), format!("same key as clients[{j}]: each client needs its own"));
        }
    }
}

fn messages(f: &MessagesFile, p: &mut Problems) -> Option<MessagesConfig> {
    let timeout = int_in(f.reply_timeout_ms, DEFAULT_MESSAGES_REPLY_TIMEOUT_MS, 100..=4500);
    let timeout = p.check("messages.reply_timeout_ms", timeout.map_err(|e| format!("{e} (WeChat waits 5 s)")));
    let max_age = p.check("messages.max_age_hours", int_in(f.max_age_hours, DEFAULT_MESSAGES_MAX_AGE_HOURS, 1..=720));
    let built: Vec<Option<RouteConfig>> = f.routes.iter().enumerate().map(|(i, r)| route(i, r, p)).collect();
    for (i, r) in f.routes.iter().enumerate() {
        let Some(name) = &r.name else { continue };
        if let Some(j) = f.routes[..i].iter().position(|e| e.name.as_ref() == Some(name)) {
            p.push(format!("messages.routes[{i}].name"), format!("same name as messages.routes[{j}]"));
        }
    }
    Some(MessagesConfig {
        reply_timeout: Duration::from_millis(timeout?),
        max_age: Duration::from_secs(max_age? * 3600),
        release_check: f.release_check.unwrap_or(true),
        routes: built.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

fn events(f: &EventsFile, messages: &MessagesFile, p: &mut Problems) -> Option<EventsConfig> {
    let built: Vec<Option<EventRouteConfig>> = f.routes.iter().enumerate().map(|(i, r)| event_route(i, r, p)).collect();
    for (i, r) in f.routes.iter().enumerate() {
        let Some(name) = &r.name else { continue };
        if let Some(j) = f.routes[..i].iter().position(|e| e.name.as_ref() == Some(name)) {
            p.push(format!("events.routes[{i}].name"), format!("same name as events.routes[{j}]"));
        } else if let Some(j) = messages.routes.iter().position(|m| m.name.as_ref() == Some(name)) {
            // The outbox and its metrics know a route by its name alone.
            p.push(format!("events.routes[{i}].name"), format!("same name as messages.routes[{j}]"));
        }
    }
    Some(EventsConfig { routes: built.into_iter().collect::<Option<Vec<_>>>()? })
}

fn event_route(i: usize, f: &EventRouteFile, p: &mut Problems) -> Option<EventRouteConfig> {
    let at = |key: &str| format!("events.routes[{i}].{key}");
    let name = p.check(&at("name"), required(&f.name).and_then(route_name));
    let info_types = value_list(f.info_types.as_deref()).and_then(|types| match types {
        Some(t) if t.iter().any(|t| t == "component_verify_ticket") => {
            Err("component_verify_ticket is never handed on: the gateway keeps the ticket".to_owned())
        }
        other => Ok(other),
    });
    let info_types = p.check(&at("info_types"), info_types);
    let url = p.check(&at("url"), required(&f.url).and_then(handler_url));
    let token = p.check(&at("token"), required(&f.token).and_then(message_token));
    Some(EventRouteConfig { name: name?.to_owned(), info_types: info_types?, url: url?, token: token? })
}

fn route(i: usize, f: &RouteFile, p: &mut Problems) -> Option<RouteConfig> {
    let at = |key: &str| format!("messages.routes[{i}].{key}");
    let name = p.check(&at("name"), required(&f.name).and_then(route_name));
    let scope = match f.authorizers.as_deref() {
        None | Some([]) => Err("is required: the appids this route takes, or [\"*\"]".to_owned()),
        Some(entries) => scope(entries),
    };
    let scope = p.check(&at("authorizers"), scope);
    let msg_types = p.check(&at("msg_types"), value_list(f.msg_types.as_deref()));
    let events = p.check(&at("events"), value_list(f.events.as_deref()));
    if let (Some(Some(types)), Some(Some(_))) = (&msg_types, &events) {
        if !types.iter().any(|t| t == "event") {
            p.push(at("events"), "only match MsgType event, which msg_types leaves out: add \"event\" to msg_types");
        }
    }
    let url = p.check(&at("url"), required(&f.url).and_then(handler_url));
    let token = p.check(&at("token"), required(&f.token).and_then(message_token));
    let mode = match f.mode.as_deref() {
        Some("reply") => Ok(DeliveryMode::Reply),
        Some("deliver") => Ok(DeliveryMode::Deliver),
        Some(_) => Err("must be \"reply\" or \"deliver\"".to_owned()),
        None => Err("is required: \"reply\" (the handler answers while WeChat waits) or \"deliver\"".to_owned()),
    };
    let mode = p.check(&at("mode"), mode);
    Some(RouteConfig {
        name: name?.to_owned(),
        authorizers: scope?,
        msg_types: msg_types?,
        events: events?,
        url: url?,
        token: token?,
        mode: mode?,
    })
}

/// A route's name is a metric label and is stored with each message: short and plain.
fn route_name(value: &str) -> Result<&str, String> {
    let plain = value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (1..=64).contains(&value.len()) && plain {
        true => Ok(value),
        false => Err("must be 1 to 64 letters, digits, - or _".to_owned()),
    }
}

/// An optional list of MsgType or Event values: absent matches all; present must not be empty.
fn value_list(values: Option<&[String]>) -> Result<Option<Vec<String>>, String> {
    let Some(values) = values else { return Ok(None) };
    if values.is_empty() {
        return Err("must not be empty: leave the key out to match every value".to_owned());
    }
    if values.iter().any(|v| v.trim().is_empty() || v.trim() != v) {
        return Err("entries must not be empty or start or end with whitespace".to_owned());
    }
    Ok(Some(values.to_vec()))
}

/// A handler's URL: http(s) with a host and no fragment; its own query is kept.
fn handler_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment (#)".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".to_owned());
    }
    Ok(url)
}

/// `["*"]` is every authorizer; otherwise each entry is an appid. Duplicates are dropped.
fn scope(entries: &[String]) -> Result<AuthorizerScope, String> {
    if entries.iter().any(|e| e == "*") {
        return match entries.len() {
            1 => Ok(AuthorizerScope::All),
            _ => Err("\"*\" must stand alone: it already allows every authorizer".to_owned()),
        };
    }
    let bad: Vec<String> = entries.iter().filter(|e| !AppId::is_valid(e)).map(|e| format!("{e:?}")).collect();
    if !bad.is_empty() {
        let rule = "each entry must be \"*\" or an appid (\"wx\" + 16 lowercase hex digits)";
        return Err(format!("{rule}, unlike {}", bad.join(", ")));
    }
    let mut appids: Vec<AppId> = entries.iter().filter_map(|e| AppId::parse(e).ok()).collect();
    appids.sort();
    appids.dedup();
    Ok(AuthorizerScope::Only(appids))
}

fn or<'a>(value: &'a Option<String>, default: &'a str) -> &'a str {
    value.as_deref().unwrap_or(default)
}

fn required(value: &Option<String>) -> Result<&str, String> {
    value.as_deref().ok_or_else(|| "is required".to_owned())
}

fn non_blank(value: &str) -> Result<&str, String> {
    match value.trim() {
        "" => Err("must not be empty".to_owned()),
        _ => Ok(value),
    }
}

/// An integer in `range`, or `default` when unset.
fn int_in(value: Option<i64>, default: u64, range: RangeInclusive<u64>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(default);
    };
    u64::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| format!("must be between {} and {}", range.start(), range.end()))
}

fn socket_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| format!("must be IP:PORT, such as {DEFAULT_LISTEN_PROXY} or [::1]:8080"))
}

/// An http(s) URL with a host, no credentials, query or fragment; its path is made to end with
/// `/` so that `Url::join` appends to it instead of replacing its last segment.
fn http_url(value: &str) -> Result<Url, String> {
    let mut url = Url::parse(value).map_err(|e| format!("is not a URL: {e}"))?;
    let problem = if !matches!(url.scheme(), "http" | "https") {
        Some("must start with http:// or https://")
    } else if url.host_str().is_none_or(str::is_empty) {
        Some("must have a host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("must not carry a user name or password")
    } else if url.query().is_some() || url.fragment().is_some() {
        Some("must not have a query (?) or fragment (#)")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(problem.to_owned());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A `redis://` or `rediss://` URL with a host, or a `redis+sentinel://` URL naming Sentinels
/// and a service. It may hold a password, so it stays a `Secret` and no message quotes it
/// (url's own errors name the fault, not the text).
fn redis_url(value: &str) -> Result<Secret, String> {
    if value.starts_with(SENTINEL_SCHEME) {
        return parse_sentinel_url(value).map(|_| Secret::new(value));
    }
    let url = Url::parse(value).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err("must start with redis://, rediss:// or redis+sentinel://".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".to_owned());
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests;
