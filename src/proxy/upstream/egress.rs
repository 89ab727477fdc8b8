//! Out through a forward proxy (`upstream.proxy`): an HTTPS host is reached in a `CONNECT`
//! tunnel, inside which pingora speaks TLS to WeChat and verifies it as on a direct connection;
//! a plain-HTTP host by sending each request to the proxy in absolute form. The proxy's
//! credentials go as `Proxy-Authorization: Basic` and are never logged. With a proxy the
//! gateway never resolves WeChat's hosts itself: networks that need one often have no outside DNS.

use super::UpstreamError;
use crate::config::EgressProxy;
use crate::metrics;
use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer head a proxy may give to `CONNECT`.
const MAX_HEAD: usize = 8192;

/// The proxy, resolved once at start-up.
#[derive(Debug)]
pub(super) struct Egress {
    pub addr: SocketAddr,
    /// `host:port`, for log lines.
    pub name: String,
    /// `Basic ...`, when the URL has credentials.
    pub authorization: Option<http::HeaderValue>,
}

impl Egress {
    pub fn new(proxy: &EgressProxy) -> Result<Arc<Self>, UpstreamError> {
        let resolve =
            |reason: String| UpstreamError::Resolve { url: format!("upstream.proxy {}", proxy.describe()), reason };
        let addr = (proxy.host.as_str(), proxy.port)
            .to_socket_addrs()
            .map_err(|e| resolve(e.to_string()))?
            .next()
            .ok_or_else(|| resolve("no address".into()))?;
        let authorization = match &proxy.authorization {
            Some(value) => Some(
                http::HeaderValue::from_str(value.expose())
                    .map_err(|_| resolve("the credentials do not make a header".into()))?,
            ),
            None => None,
        };
        Ok(Arc::new(Self { addr, name: proxy.describe(), authorization }))
    }

    pub fn unreachable(&self, e: &Error) {
        self.failed("unreachable", format!("{:?}", e.etype()));
    }

    pub fn refused(&self, status: u16) {
        self.failed("refused", format!("it answered {status} (407: it refused the credentials)"));
    }

    /// A refusal or failure of the proxy's own: logged with its name, counted, and made the
    /// connect error the call then answers 502 for.
    fn failed(&self, reason: &'static str, detail: String) -> Box<Error> {
        metrics::EGRESS_PROXY_FAILURES.with_label_values(&[reason]).inc();
        tracing::warn!(proxy = %self.name, reason, detail, "the egress proxy did not open the way to WeChat");
        Error::explain(ErrorType::ConnectProxyFailure, format!("egress proxy {}: {detail}", self.name))
    }
}

/// How pingora connects to an HTTPS host through the proxy: its "layer 4" is the tunnel.
#[derive(Debug)]
pub(super) struct Tunnel {
    pub egress: Arc<Egress>,
    /// `host:port` of the WeChat host.
    pub authority: String,
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for Tunnel {
    async fn connect(&self, _addr: &PeerAddr) -> pingora::Result<Stream> {
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(self.egress.failed("timeout", format!("no tunnel within {:?}", self.timeout))),
        }
    }
}

impl Tunnel {
    async fn open(&self) -> pingora::Result<Stream> {
        let egress = &self.egress;
        let mut tcp = TcpStream::connect(egress.addr).await.map_err(|e| egress.failed("unreachable", e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut head = format!("CONNECT {0} HTTP/1.1\r\nhost: {0}\r\n", self.authority).into_bytes();
        if let Some(auth) = &egress.authorization {
            head.extend_from_slice(b"proxy-authorization: ");
            head.extend_from_slice(auth.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        tcp.write_all(&head).await.map_err(|e| egress.failed("broken", e.to_string()))?;
        match answer_status(&mut tcp).await {
            Ok(status) if (200..300).contains(&status) => Ok(Stream::from(tcp)),
            Ok(407) => Err(egress.failed("refused", "it refused the credentials (407)".into())),
            Ok(status) => {
                Err(egress.failed("refused", format!("it answered CONNECT {} with {status}", self.authority)))
            }
            Err(detail) => Err(egress.failed("broken", detail)),
        }
    }
}

/// Reads the proxy's answer head to `CONNECT` and gives its status. Nothing follows a tunnel's
/// head until the tunnel carries data, and a refusal's body is not read: the connection is dropped.
async fn answer_status(tcp: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("it closed the connection before answering CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return answer.code.ok_or_else(|| "no status".to_owned()),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("its answer head is too large".into()),
            Err(e) => return Err(format!("its answer does not parse: {e}")),
        }
    }
}
