//! One WeChat host: where it is, the peer for its address, and its idle connections.

use super::{Connection, UpstreamError, IDLE_TIMEOUT};
use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use url::Url;

/// Idle connections kept per WeChat host: as many as calls a busy gateway has in flight (each
/// holds one), so that a warm gateway makes no new handshakes; one costs a socket and ~1 KB.
const MAX_IDLE_PER_TARGET: usize = 1024;

#[derive(Debug)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: bool,
    /// The base URL's path without its trailing `/`, put before every call's path.
    pub(super) base_path: String,
    /// The `Host` header: the host, and the port when it is not the scheme's.
    pub(super) authority_value: http::HeaderValue,
    /// The peer for the resolved address, built once (a peer is a few allocations); `None`
    /// while the host could not be resolved.
    pub(super) peer: RwLock<Option<Arc<HttpPeer>>>,
    pub(super) idle: Mutex<Vec<(Connection, Instant)>>,
}

impl Target {
    pub(super) fn new(url: &Url, timeout: Duration, must_resolve: bool) -> Result<Self, UpstreamError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let peer = match resolve(&host, port) {
            Ok(addr) => Some(Arc::new(make_peer(addr, tls, &host, timeout))),
            Err(reason) if must_resolve => return Err(UpstreamError::Resolve { url: url.to_string(), reason }),
            Err(reason) => {
                tracing::warn!(url = %url, reason, "fallback host does not resolve now; it is tried again when needed");
                None
            }
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let authority_value = http::HeaderValue::from_str(&authority)
            .map_err(|e| UpstreamError::Resolve { url: url.to_string(), reason: e.to_string() })?;
        Ok(Self {
            host,
            port,
            tls,
            base_path: url.path().trim_end_matches('/').to_owned(),
            authority_value,
            peer: RwLock::new(peer),
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn idle(&self) -> MutexGuard<'_, Vec<(Connection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `conn`, idle since `since`, for the next call; the oldest goes when the pool is full.
    pub(super) fn keep(&self, conn: Connection, since: Instant) {
        let mut idle = self.idle();
        if idle.len() >= MAX_IDLE_PER_TARGET {
            idle.remove(0);
        }
        idle.push((conn, since));
    }
}

pub(super) fn make_peer(addr: SocketAddr, tls: bool, host: &str, timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, host.to_owned());
    peer.options.connection_timeout = Some(timeout.min(Duration::from_secs(5)));
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

pub(super) fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no address".to_owned())
}
