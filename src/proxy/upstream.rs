//! Where proxied calls go: the configured WeChat host and its fallbacks, resolved once, as
//! pingora peers with TLS verification, timeouts and pooled connections.

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::RwLock;
use std::time::Duration;
use url::Url;

/// Pooled connections are kept this long idle; WeChat's side closes idle ones after about a minute.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: cannot resolve: {reason}")]
    Resolve { url: String, reason: String },
}

#[derive(Debug)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
    /// The base URL's path without its trailing `/`, put before every call's path.
    base_path: String,
    /// The `Host` header: the host, and the port when it is not the scheme's.
    authority: String,
    addr: RwLock<SocketAddr>,
}

#[derive(Debug)]
pub struct Upstream {
    targets: Vec<Target>,
    timeout: Duration,
}

impl Upstream {
    /// Resolves every host now, so that a typo fails at start-up rather than under traffic.
    pub fn new(primary: &Url, fallbacks: &[Url], timeout: Duration) -> Result<Self, UpstreamError> {
        let targets = std::iter::once(primary).chain(fallbacks).map(Target::new).collect::<Result<_, _>>()?;
        Ok(Self { targets, timeout })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The peer for attempt `index` (0 = primary), or `None` when every target was tried.
    pub fn peer(&self, index: usize) -> Option<HttpPeer> {
        let t = self.targets.get(index)?;
        let addr = *t.addr.read().unwrap_or_else(|p| p.into_inner());
        let mut peer = HttpPeer::new(addr, t.tls, t.host.clone());
        peer.options.connection_timeout = Some(self.timeout.min(Duration::from_secs(5)));
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        Some(peer)
    }

    /// Resolves target `index` again, off the async threads: after a failed connect the host's
    /// addresses may have changed.
    pub async fn re_resolve(&self, index: usize) {
        let Some(t) = self.targets.get(index) else { return };
        let (host, port) = (t.host.clone(), t.port);
        if let Ok(Ok(addr)) = tokio::task::spawn_blocking(move || resolve(&host, port)).await {
            *t.addr.write().unwrap_or_else(|p| p.into_inner()) = addr;
        }
    }

    /// Points `req` at target `index`: its path prefix and its `Host`.
    pub fn aim(&self, req: &mut RequestHeader, index: usize, path_and_query: &str) -> pingora::Result<()> {
        let t = &self.targets[index.min(self.targets.len() - 1)];
        let uri = if t.base_path.is_empty() { path_and_query.to_owned() } else { format!("{}{path_and_query}", t.base_path) };
        req.set_uri(uri.parse().map_err(|_| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?);
        req.insert_header(http::header::HOST, t.authority.as_str())
    }
}

impl Target {
    fn new(url: &Url) -> Result<Self, UpstreamError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let addr = resolve(&host, port).map_err(|reason| UpstreamError::Resolve { url: url.to_string(), reason })?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Self { host, port, tls, base_path: url.path().trim_end_matches('/').to_owned(), authority, addr: RwLock::new(addr) })
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aims_at_the_base_path_and_host() {
        let up = Upstream::new(&Url::parse("http://127.0.0.1:9801/wx/").unwrap(), &[Url::parse("http://localhost/").unwrap()], Duration::from_secs(3)).unwrap();
        assert_eq!(up.len(), 2);
        let mut req = RequestHeader::build("GET", b"/ignored", None).unwrap();
        up.aim(&mut req, 0, "/cgi-bin/user/info?access_token=t").unwrap();
        assert_eq!(req.uri.to_string(), "/wx/cgi-bin/user/info?access_token=t");
        assert_eq!(req.headers["host"], "127.0.0.1:9801");
        up.aim(&mut req, 1, "/x").unwrap();
        assert_eq!((req.uri.to_string().as_str(), req.headers["host"].to_str().unwrap()), ("/x", "localhost"));
        assert!(up.peer(2).is_none());
        assert!(Upstream::new(&Url::parse("https://no-such-host.invalid/").unwrap(), &[], Duration::from_secs(1)).is_err());
    }
}
