//! Where the Redis store connects: one server (`redis://`, `rediss://`), or whichever server the
//! Sentinels name master of a service (`redis+sentinel://`), asked again on every reconnect so
//! that the store follows a failover.

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, RedisResult};
use std::time::Duration;

pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// A parsed `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    /// For the master and replicas; the Sentinels themselves are asked without credentials.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Parses a Sentinel URL; the error names the fault, never the text (it may hold a password).
pub fn parse_sentinel_url(url: &str) -> Result<SentinelUrl, String> {
    let rest = url.strip_prefix(SENTINEL_SCHEME).ok_or_else(|| format!("must start with {SENTINEL_SCHEME}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => (None, None),
        Some((user, pass)) => {
            (Some(decode(user)?).filter(|u| !u.is_empty()), Some(decode(pass)?).filter(|p| !p.is_empty()))
        }
    };
    let sentinels = hosts.split(',').map(host_port).collect::<Result<Vec<_>, _>>()?;
    if sentinels.is_empty() {
        return Err("names no Sentinel (host:port)".into());
    }
    let mut segments = path.split('/');
    let service = segments.next().filter(|s| !s.is_empty()).ok_or("must name the service: .../service_name[/db]")?;
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => {
            db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or("the database after the service must be a number")?
        }
    };
    if segments.next().is_some() || service.contains(['?', '#']) {
        return Err("must be .../service_name[/db], with no more path, query or fragment".into());
    }
    Ok(SentinelUrl { sentinels, service: service.to_owned(), db, username, password })
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "user name or password is not UTF-8 once percent-decoded".into())
}

fn host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or("every Sentinel must be host:port")?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or("a Sentinel's port must be 1..65535")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("a Sentinel has no host".into());
    }
    Ok((host.to_owned(), port))
}

pub(super) enum Target {
    Direct(Client),
    /// The Sentinel client is asked by one task at a time: it keeps its connections to the
    /// Sentinels between calls.
    Sentinel {
        sentinels: Box<tokio::sync::Mutex<SentinelClient>>,
        service: String,
        /// The Sentinels again, asked directly which master they name (see [`Target::named_master`]),
        /// with the connection to the last one that answered.
        nodes: Vec<Client>,
        asked: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    },
}

impl Target {
    pub(super) fn open(url: &str) -> RedisResult<Self> {
        if !url.starts_with(SENTINEL_SCHEME) {
            return Client::open(url).map(Self::Direct);
        }
        let parsed = parse_sentinel_url(url).map_err(|e| (redis::ErrorKind::InvalidClientConfig, "sentinel url", e))?;
        let sentinels: Vec<ConnectionInfo> = parsed
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.clone(), *port),
                redis: RedisConnectionInfo::default(),
            })
            .collect();
        let nodes = sentinels.iter().cloned().map(Client::open).collect::<RedisResult<Vec<_>>>()?;
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(RedisConnectionInfo {
                db: parsed.db,
                username: parsed.username,
                password: parsed.password,
                ..RedisConnectionInfo::default()
            }),
        };
        let client = SentinelClient::build(sentinels, parsed.service.clone(), Some(node), SentinelServerType::Master)?;
        Ok(Self::Sentinel {
            sentinels: Box::new(tokio::sync::Mutex::new(client)),
            service: parsed.service,
            nodes,
            asked: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::Direct(client) => format!("{:?}", client.get_connection_info().addr),
            Self::Sentinel { service, .. } => format!("the master of Sentinel service {service}"),
        }
    }

    /// A fresh connection to the master, checked: it answers PING (not while loading its data)
    /// and, behind Sentinel, calls itself master. The caller bounds the time.
    pub(super) async fn connect(&self, timeout: Duration) -> RedisResult<(Client, MultiplexedConnection)> {
        let client = match self {
            Self::Direct(client) => client.clone(),
            Self::Sentinel { sentinels, .. } => sentinels.lock().await.async_get_client().await?,
        };
        let config = AsyncConnectionConfig::new().set_connection_timeout(timeout);
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        self.check(&mut conn).await?;
        Ok((client, conn))
    }

    /// Whether the Sentinels now name a master other than `client`'s server: a failover the
    /// old master does not know of yet (Sentinel demotes it only when it next looks at it, and
    /// what it accepts meanwhile is lost). `false` when no Sentinel answers: a master that
    /// works is not given up because its Sentinels are away. The caller bounds the time.
    pub(super) async fn moved_from(&self, client: &Client) -> bool {
        let Self::Sentinel { service, nodes, asked, .. } = self else { return false };
        let Some((host, port)) = named_master(service, nodes, asked).await else { return false };
        match &client.get_connection_info().addr {
            ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => {
                !(*p == port && (*h == host || same_ip(h, &host)))
            }
            _ => false,
        }
    }

    /// Whether the server behind `conn` can serve the store: it answers PING (not while loading
    /// its data) and, behind Sentinel, is still master (a failover demotes it).
    pub(super) async fn check(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let _: String = redis::cmd("PING").query_async(conn).await?;
        if let Self::Sentinel { .. } = self {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                return Err(
                    (redis::ErrorKind::ReadOnly, "the server Sentinel named is not (or no longer) master").into()
                );
            }
        }
        Ok(())
    }
}

/// `SENTINEL get-master-addr-by-name`, from the first Sentinel that answers.
async fn named_master(
    service: &str,
    nodes: &[Client],
    asked: &tokio::sync::Mutex<Option<MultiplexedConnection>>,
) -> Option<(String, u16)> {
    let mut asked = asked.lock().await;
    let query = |mut conn: MultiplexedConnection| async move {
        let addr: Option<(String, u16)> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(service).query_async(&mut conn).await?;
        RedisResult::Ok((addr, conn))
    };
    if let Some(conn) = asked.take() {
        if let Ok((addr, conn)) = query(conn).await {
            *asked = Some(conn);
            return addr;
        }
    }
    for node in nodes {
        if let Ok(conn) = node.get_multiplexed_async_connection().await {
            if let Ok((addr, conn)) = query(conn).await {
                *asked = Some(conn);
                return addr;
            }
        }
    }
    None
}

fn same_ip(a: &str, b: &str) -> bool {
    matches!((a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let u = parse_sentinel_url("redis+sentinel://:p%40ss@10.0.0.1:26379,sentinel-b:26380/mymaster/2").unwrap();
        assert_eq!(u.sentinels, [("10.0.0.1".to_owned(), 26379), ("sentinel-b".to_owned(), 26380)]);
        assert_eq!((u.service.as_str(), u.db), ("mymaster", 2));
        assert_eq!((u.username, u.password.as_deref()), (None, Some("p@ss")));
        let u = parse_sentinel_url("redis+sentinel://127.0.0.1:26379/svc").unwrap();
        assert_eq!((u.db, u.password), (0, None));
        assert_eq!(parse_sentinel_url("redis+sentinel://[::1]:26379/svc/").unwrap().sentinels[0].0, "::1");
        for bad in [
            "redis://127.0.0.1:6379",
            "redis+sentinel://127.0.0.1:26379",
            "redis+sentinel://127.0.0.1:26379/",
            "redis+sentinel://127.0.0.1/svc",
            "redis+sentinel://127.0.0.1:0/svc",
            "redis+sentinel://:26379/svc",
            "redis+sentinel://a:1,/svc",
            "redis+sentinel://a:1/svc/x",
            "redis+sentinel://a:1/svc/1/2",
            "redis+sentinel://a:1/svc?x=1",
        ] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad}");
        }
    }
}
