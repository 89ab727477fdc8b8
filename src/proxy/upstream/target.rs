//! One WeChat host: where it is, the peer for its address, and its idle connections.

use super::egress::{Egress, Tunnel};
use super::pool::Pool;
use super::{UpstreamError, IDLE_TIMEOUT};
use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use url::Url;

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
    /// Its idle connections, kept per thread (see [`Pool`]).
    pub(super) idle: Pool,
    /// The forward proxy calls go through, if any.
    pub(super) egress: Option<Arc<Egress>>,
    /// A plain-HTTP host through the proxy: requests go to the proxy in absolute form.
    pub(super) via: Option<Via>,
}

/// What a request to a plain-HTTP host through the proxy carries besides its own head.
#[derive(Debug)]
pub(super) struct Via {
    /// `http://host[:port]`, put before the path.
    pub absolute: String,
    pub authorization: Option<http::HeaderValue>,
}

impl Target {
    pub(super) fn new(
        url: &Url,
        timeout: Duration,
        must_resolve: bool,
        egress: Option<&Arc<Egress>>,
    ) -> Result<Self, UpstreamError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let (peer, via) = match egress {
            Some(egress) => {
                let (peer, via) = through(url, &host, port, tls, timeout, egress);
                (Some(Arc::new(peer)), via)
            }
            None => match resolve(&host, port) {
                Ok(addr) => (Some(Arc::new(make_peer(addr, tls, &host, timeout))), None),
                Err(reason) if must_resolve => return Err(UpstreamError::Resolve { url: url.to_string(), reason }),
                Err(reason) => {
                    tracing::warn!(url = %url, reason, "fallback host does not resolve now; it is tried again when needed");
                    (None, None)
                }
            },
        };
        Ok(Self {
            authority_value: authority_header(url)?,
            host,
            port,
            tls,
            base_path: url.path().trim_end_matches('/').to_owned(),
            peer: RwLock::new(peer),
            idle: Pool::new(),
            egress: egress.cloned(),
            via,
        })
    }

    /// A connection to the host could not be made: said once, naming the proxy when there is one
    /// (a tunnel's refusal was said and counted where it was refused).
    pub(super) fn unreachable(&self, e: &pingora::Error) {
        match (&self.egress, &self.via) {
            (Some(egress), Some(_)) => egress.unreachable(e),
            (Some(_), None) => {}
            (None, _) => {
                tracing::warn!(host = %self.host, error = ?e.etype(), "could not connect to WeChat; trying the next host")
            }
        }
    }

    /// Whether an answer through the proxy in absolute form is the proxy's refusal (407: its
    /// credentials), not WeChat's answer: then it is said, counted and answered 502.
    pub(super) fn proxy_refused(&self, status: u16) -> bool {
        match (&self.egress, &self.via, status) {
            (Some(egress), Some(_), 407) => {
                egress.refused(407);
                true
            }
            _ => false,
        }
    }
}

/// The peer for a host reached through `egress`: a connection goes to the proxy, in a `CONNECT`
/// tunnel for HTTPS (pingora's TLS inside it, with the host's name), as is for plain HTTP, whose
/// requests then need the absolute form.
fn through(
    url: &Url,
    host: &str,
    port: u16,
    tls: bool,
    timeout: Duration,
    egress: &Arc<Egress>,
) -> (HttpPeer, Option<Via>) {
    let mut peer = make_peer(egress.addr, tls, host, timeout);
    if tls {
        let authority = format!("{host}:{port}");
        let tunnel = Tunnel { egress: Arc::clone(egress), authority, timeout: timeout.min(Duration::from_secs(5)) };
        peer.options.custom_l4 = Some(Arc::new(tunnel));
        return (peer, None);
    }
    let via = Via { absolute: format!("http://{}", authority_of(url)), authorization: egress.authorization.clone() };
    (peer, Some(via))
}

/// The host, and the port when it is not the scheme's: what `Host` says.
fn authority_of(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

fn authority_header(url: &Url) -> Result<http::HeaderValue, UpstreamError> {
    http::HeaderValue::from_str(&authority_of(url))
        .map_err(|e| UpstreamError::Resolve { url: url.to_string(), reason: e.to_string() })
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
