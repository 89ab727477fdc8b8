//! Where proxied calls go: the configured WeChat host and its fallbacks, resolved once, as
//! pingora peers with TLS verification, timeouts and pooled connections.

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};
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
    authority_value: http::HeaderValue,
    /// The peer for the resolved address, built once: a peer is a few allocations.
    peer: RwLock<Arc<HttpPeer>>,
}

#[derive(Debug)]
pub struct Upstream {
    targets: Vec<Target>,
    timeout: Duration,
}

impl Upstream {
    /// Resolves every host now, so that a typo fails at start-up rather than under traffic.
    pub fn new(primary: &Url, fallbacks: &[Url], timeout: Duration) -> Result<Self, UpstreamError> {
        let targets =
            std::iter::once(primary).chain(fallbacks).map(|url| Target::new(url, timeout)).collect::<Result<_, _>>()?;
        Ok(Self { targets, timeout })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The peer for attempt `index` (0 = primary), or `None` when every target was tried.
    pub fn peer(&self, index: usize) -> Option<Arc<HttpPeer>> {
        let t = self.targets.get(index)?;
        Some(Arc::clone(&t.peer.read().unwrap_or_else(|p| p.into_inner())))
    }

    /// How long a pooled connection to WeChat may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        IDLE_TIMEOUT
    }

    /// Resolves target `index` again, off the async threads: after a failed connect the host's
    /// addresses may have changed.
    pub async fn re_resolve(&self, index: usize) {
        let Some(t) = self.targets.get(index) else { return };
        let (host, port) = (t.host.clone(), t.port);
        if let Ok(Ok(addr)) = tokio::task::spawn_blocking(move || resolve(&host, port)).await {
            *t.peer.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(make_peer(addr, t.tls, &t.host, self.timeout));
        }
    }

    /// Points `req` at target `index`: its path prefix and its `Host`.
    pub fn aim(&self, req: &mut RequestHeader, index: usize, path_and_query: &str) -> pingora::Result<()> {
        let t = self.target(index);
        let mut uri = String::with_capacity(t.base_path.len() + path_and_query.len());
        uri.push_str(&t.base_path);
        uri.push_str(path_and_query);
        self.aim_owned(req, index, uri)
    }

    /// The path prefix of target `index`, which every path WeChat sees starts with.
    pub fn base_path(&self, index: usize) -> &str {
        &self.target(index).base_path
    }

    /// [`Self::aim`] with the whole path and query (base path included) already built: no copy.
    pub fn aim_owned(&self, req: &mut RequestHeader, index: usize, uri: String) -> pingora::Result<()> {
        let t = self.target(index);
        let uri = http::Uri::from_maybe_shared(bytes::Bytes::from(uri))
            .map_err(|_| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
        req.set_uri(uri);
        req.insert_header(http::header::HOST, t.authority_value.clone())
    }

    fn target(&self, index: usize) -> &Target {
        &self.targets[index.min(self.targets.len() - 1)]
    }
}

impl Target {
    fn new(url: &Url, timeout: Duration) -> Result<Self, UpstreamError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let addr = resolve(&host, port).map_err(|reason| UpstreamError::Resolve { url: url.to_string(), reason })?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let authority_value = http::HeaderValue::from_str(&authority)
            .map_err(|e| UpstreamError::Resolve { url: url.to_string(), reason: e.to_string() })?;
        let peer = RwLock::new(Arc::new(make_peer(addr, tls, &host, timeout)));
        Ok(Self { host, port, tls, base_path: url.path().trim_end_matches('/').to_owned(), authority_value, peer })
    }
}

fn make_peer(addr: SocketAddr, tls: bool, host: &str, timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, host.to_owned());
    peer.options.connection_timeout = Some(timeout.min(Duration::from_secs(5)));
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aims_at_the_base_path_and_host() {
        let up = Upstream::new(
            &Url::parse("http://127.0.0.1:9801/wx/").unwrap(),
            &[Url::parse("http://localhost/").unwrap()],
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(up.len(), 2);
        let mut req = RequestHeader::build("GET", b"/ignored", None).unwrap();
        up.aim(&mut req, 0, "/cgi-bin/user/info?access_token=t").unwrap();
        assert_eq!(req.uri.to_string(), "/wx/cgi-bin/user/info?access_token=t");
        assert_eq!(req.headers["host"], "127.0.0.1:9801");
        up.aim(&mut req, 1, "/x").unwrap();
        assert_eq!((req.uri.to_string().as_str(), req.headers["host"].to_str().unwrap()), ("/x", "localhost"));
        assert!(up.peer(2).is_none());
        assert!(
            Upstream::new(&Url::parse("https://no-such-host.invalid/").unwrap(), &[], Duration::from_secs(1)).is_err()
        );
    }
}
