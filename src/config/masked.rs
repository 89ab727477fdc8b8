//! `Config::masked`: the effective configuration as TOML, every secret printed as `"..."`.

use super::file::{
    AccountFile, AdminFile, ClientFile, ComponentFile, EventRouteFile, EventsFile, FileConfig, ListenFile,
    MessagesFile, ProxyFile, QuotaFile, RefreshFile, ReleasesFile, RouteFile, ServerFile, StoreFile, UpstreamFile,
};
use super::{
    AccountConfig, AuthorizerScope, ClientConfig, Config, EgressProxy, EventRouteConfig, RouteConfig, StoreConfig,
};

/// The effective configuration in the file's own schema, every secret as `"..."`.
pub(super) fn masked(config: &Config) -> String {
    let file = FileConfig {
        component: config.component.as_ref().map_or_else(ComponentFile::default, |c| ComponentFile {
            appid: Some(c.appid.to_string()),
            appsecret: Some(MASK.to_owned()),
            token: Some(MASK.to_owned()),
            encoding_aes_key: Some(MASK.to_owned()),
        }),
        accounts: config.accounts.iter().map(masked_account).collect(),
        upstream: UpstreamFile {
            base_url: Some(config.upstream.base_url.to_string()),
            timeout_ms: int(config.upstream.timeout.as_millis()),
            mp_base_url: Some(config.upstream.mp_base_url.to_string()),
            fallback_urls: Some(config.upstream.fallback_urls.iter().map(ToString::to_string).collect()),
            ca_file: config.upstream.ca_file.as_ref().map(|ca| ca.path.display().to_string()),
            proxy: config.upstream.proxy.as_ref().map(EgressProxy::masked),
        },
        listen: ListenFile {
            proxy: Some(config.listen.proxy.to_string()),
            admin: Some(config.listen.admin.to_string()),
            public_base_url: Some(config.listen.public_base_url.to_string()),
            tls_cert: config.listen.tls.as_ref().map(|t| t.cert_path.display().to_string()),
            tls_key: config.listen.tls.as_ref().map(|t| t.key_path.display().to_string()),
        },
        store: masked_store(&config.store),
        refresh: RefreshFile {
            ahead_secs: int(config.refresh.ahead.as_secs().into()),
            reconcile_hours: int(config.refresh.reconcile_every.map_or(0, |d| d.as_secs() / 3600).into()),
            budget_per_minute: int(config.refresh.budget_per_minute.into()),
        },
        admin: AdminFile { token: Some(MASK.to_owned()) },
        proxy: ProxyFile {
            max_body_bytes: int(config.proxy.max_body_bytes as u128),
            replay_body_bytes: int(config.proxy.replay_body_bytes as u128),
            access_log: Some(config.proxy.access_log),
            access_log_format: Some(config.proxy.access_log_format.as_str().to_owned()),
            keepalive_timeout_secs: int(config.proxy.keepalive_timeout.as_secs().into()),
            header_timeout_secs: int(config.proxy.header_timeout.as_secs().into()),
        },
        server: ServerFile {
            threads: int(config.server.threads as u128),
            shutdown_grace_secs: int(config.server.shutdown_grace.as_secs().into()),
        },
        clients: config.clients.iter().map(masked_client).collect(),
        messages: MessagesFile {
            reply_timeout_ms: int(config.messages.reply_timeout.as_millis()),
            max_age_hours: int((config.messages.max_age.as_secs() / 3600).into()),
            release_check: Some(config.messages.release_check),
            routes: config.messages.routes.iter().map(masked_route).collect(),
        },
        events: EventsFile { routes: config.events.routes.iter().map(masked_event_route).collect() },
        quota: QuotaFile { guard: Some(config.quota.guard) },
        releases: ReleasesFile { audit_poll_secs: int(config.releases.audit_poll.as_secs().into()) },
    };
    toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
}

const MASK: &str = "...";

fn int(n: u128) -> Option<i64> {
    i64::try_from(n).ok()
}

fn masked_store(store: &StoreConfig) -> StoreFile {
    let backend = |name: &str| Some(name.to_owned());
    match store {
        StoreConfig::Sqlite { path } => {
            StoreFile { backend: backend("sqlite"), path: Some(path.display().to_string()), ..StoreFile::default() }
        }
        StoreConfig::Redis { url, key_prefix, options } => StoreFile {
            backend: backend("redis"),
            redis_url: Some(masked_redis_url(url.expose())),
            key_prefix: Some(key_prefix.clone()),
            redis_timeout_ms: int(options.timeout.as_millis()),
            redis_wait_replicas: Some(i64::from(options.wait_replicas)),
            redis_wait_timeout_ms: int(options.wait_timeout.as_millis()),
            ..StoreFile::default()
        },
        StoreConfig::Memory => StoreFile { backend: backend("memory"), ..StoreFile::default() },
    }
}

/// The URL with its password, if any, replaced by `...`; the rest helps to spot a wrong host.
fn masked_redis_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix(crate::store::SENTINEL_SCHEME) {
        // Several hosts are no URL to the url crate: mask whatever precedes the last `@`.
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        return match authority.rsplit_once('@') {
            Some((_, hosts)) => format!("{}{MASK}@{hosts}/{path}", crate::store::SENTINEL_SCHEME),
            None => url.to_owned(),
        };
    }
    let Ok(mut url) = url::Url::parse(url) else {
        return MASK.to_owned();
    };
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return MASK.to_owned();
    }
    url.to_string()
}

fn scope_list(scope: &AuthorizerScope) -> Vec<String> {
    match scope {
        AuthorizerScope::All => vec!["*".to_owned()],
        AuthorizerScope::Only(appids) => appids.iter().map(ToString::to_string).collect(),
    }
}

fn masked_route(route: &RouteConfig) -> RouteFile {
    RouteFile {
        name: Some(route.name.clone()),
        authorizers: Some(scope_list(&route.authorizers)),
        msg_types: route.msg_types.clone(),
        events: route.events.clone(),
        url: Some(route.url.to_string()),
        token: Some(MASK.to_owned()),
        mode: Some(route.mode.as_str().to_owned()),
    }
}

fn masked_event_route(route: &EventRouteConfig) -> EventRouteFile {
    EventRouteFile {
        name: Some(route.name.clone()),
        info_types: route.info_types.clone(),
        url: Some(route.url.to_string()),
        token: Some(MASK.to_owned()),
    }
}

fn masked_client(client: &ClientConfig) -> ClientFile {
    let authorizers = scope_list(&client.authorizers);
    ClientFile {
        name: Some(client.name.clone()),
        key: Some(MASK.to_owned()),
        authorizers: Some(authorizers),
        component: Some(client.component),
        reveal_tokens: Some(client.reveal_tokens),
        rate_per_second: client.rate_per_second,
        daily_share: client.daily_share,
    }
}

/// An owned account: a secret from the environment shows the variable's name, one from the
/// file `"..."`.
fn masked_account(a: &AccountConfig) -> AccountFile {
    AccountFile {
        appid: Some(a.appid.to_string()),
        secret: a.secret_env.is_none().then(|| MASK.to_owned()),
        secret_env: a.secret_env.clone(),
        token: a.token.as_ref().map(|_| MASK.to_owned()),
        encoding_aes_key: a.encoding_aes_key.as_ref().map(|_| MASK.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_password_is_masked() {
        assert_eq!(masked_redis_url("redis://:hunter2@redis:6379/0"), "redis://:...@redis:6379/0");
        assert_eq!(masked_redis_url("rediss://u:hunter2@redis/1"), "rediss://u:...@redis/1");
        assert_eq!(
            masked_redis_url("redis+sentinel://:hunter2@s1:26379,s2:26379/svc/1"),
            "redis+sentinel://...@s1:26379,s2:26379/svc/1"
        );
        assert_eq!(masked_redis_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
