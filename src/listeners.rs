//! The listening sockets, bound before anything starts: inherited from the launcher (systemd's
//! socket-activation protocol, `LISTEN_FDS` and `LISTEN_FDNAMES`) or bound here on the configured
//! address, and handed to pingora already bound.
//!
//! Binding here rather than in pingora means a port that is taken is an error at start-up naming
//! the key, where pingora would retry for 30 s and then lose the listener in a service thread.
//! Inheriting means whoever starts the gateway holds the port throughout: a supervisor keeps it
//! across restarts, and a test binds port 0 and passes the socket, so no two runs ever race for
//! a port. Port 0 in the config also works: the address the OS chose is logged.

use crate::config::ListenConfig;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::Service;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

/// The first inherited descriptor (SD_LISTEN_FDS_START): 0–2 are stdin, stdout and stderr.
const FIRST_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    // `cause`, not `source`: the message carries it, and `{:#}` would print it twice.
    #[error("cannot listen on {addr} ({key}): {cause}")]
    Bind { key: &'static str, addr: SocketAddr, cause: std::io::Error },
    #[error("the inherited socket {name:?} (LISTEN_FDNAMES) is not a TCP socket: {cause}")]
    NotASocket { name: String, cause: std::io::Error },
    #[error("LISTEN_FDS / LISTEN_FDNAMES: {0}")]
    Protocol(String),
}

/// A bound, listening, non-blocking socket and its address.
#[derive(Debug)]
pub struct Socket {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Socket {
    pub fn into_std(self) -> TcpListener {
        self.listener
    }
}

/// The gateway's two listeners, bound.
#[derive(Debug)]
pub struct Sockets {
    pub proxy: Socket,
    pub admin: Socket,
}

impl Sockets {
    /// The sockets named `proxy` and `admin` if the launcher passed them, else bound on
    /// `listen.proxy` and `listen.admin`.
    pub fn take(listen: &ListenConfig) -> Result<Self, ListenError> {
        Ok(Self {
            proxy: take("proxy", "listen.proxy", listen.proxy)?,
            admin: take("admin", "listen.admin", listen.admin)?,
        })
    }
}

/// Takes the socket named `name` from the launcher if it passed one, else binds `configured`.
/// `key` is the config key the address came from, for the error. Each name is taken once.
pub fn take(name: &str, key: &'static str, configured: SocketAddr) -> Result<Socket, ListenError> {
    let listener = match inherited()?.lock().unwrap_or_else(|e| e.into_inner()).remove(name) {
        Some(fd) => {
            // SAFETY: the launcher passed `fd` open for this process (LISTEN_PID), under this
            // name, and it is removed from the table here, so no other owner is ever made.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let addr = listener.local_addr().map_err(|cause| ListenError::NotASocket { name: name.into(), cause })?;
            if addr != configured && configured.port() != 0 {
                tracing::warn!(%addr, configured = %configured, "{key}: using the socket the launcher passed");
            }
            listener
        }
        None => TcpListener::bind(configured).map_err(|cause| ListenError::Bind { key, addr: configured, cause })?,
    };
    let bind_error = |cause| ListenError::Bind { key, addr: configured, cause };
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok(Socket { listener, addr })
}

/// The sockets the launcher passed, by name, read from the environment once.
fn inherited() -> Result<&'static Mutex<HashMap<String, RawFd>>, ListenError> {
    static TABLE: OnceLock<Result<Mutex<HashMap<String, RawFd>>, String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let var = |name| std::env::var(name).ok();
        parse(var("LISTEN_PID").as_deref(), var("LISTEN_FDS").as_deref(), var("LISTEN_FDNAMES").as_deref())
            .map(Mutex::new)
    });
    table.as_ref().map_err(|e| ListenError::Protocol(e.clone()))
}

/// The protocol: `LISTEN_FDS=N` descriptors from 3 on, named in order by `LISTEN_FDNAMES=a:b:…`;
/// `LISTEN_PID`, when set, must be this process (otherwise they were meant for a parent).
fn parse(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Result<HashMap<String, RawFd>, String> {
    let Some(fds) = fds else { return Ok(HashMap::new()) };
    if pid.is_some_and(|pid| pid.trim() != std::process::id().to_string()) {
        return Ok(HashMap::new());
    }
    let count: usize = fds.trim().parse().map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    let names: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    if names.len() != count {
        return Err(format!(
            "{count} sockets passed but {} named; name them (e.g. LISTEN_FDNAMES=proxy:admin)",
            names.len()
        ));
    }
    let mut table = HashMap::new();
    for (i, name) in names.into_iter().enumerate() {
        if table.insert(name.to_owned(), FIRST_FD + i as RawFd).is_some() {
            return Err(format!("the name {name:?} is given twice"));
        }
    }
    Ok(table)
}

/// The proxy listener's certificate: what each TLS handshake presents, replaced whole by a
/// reload that read a good new pair.
#[derive(Debug)]
pub struct Certificate(ArcSwap<CertifiedKey>);

impl Certificate {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(ArcSwap::new(key)))
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A pingora listening service whose socket is already bound. pingora looks every address up
/// in its table of inherited descriptors before binding one (the table it fills itself only in
/// a zero-downtime upgrade); this service hands it a table holding its own socket.
pub struct Prebound<S> {
    inner: S,
    fds: ListenFds,
}

impl<A> Prebound<pingora::services::listening::Service<A>>
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    /// `service` must have no address of its own: the socket's becomes its only one.
    pub fn new(service: pingora::services::listening::Service<A>, socket: Socket) -> Self {
        Self::serving(service, socket, None)
    }

    /// With `tls`, the socket speaks HTTPS only, with the certificate `tls` holds at each
    /// handshake (a reload replaces it; connections made before keep theirs).
    pub fn serving(
        mut service: pingora::services::listening::Service<A>,
        socket: Socket,
        tls: Option<Arc<Certificate>>,
    ) -> Self {
        let key = socket.addr.to_string();
        // No read buffer under the connection: pingora's default is 64 KiB for each, held for
        // the connection's life, idle or not. The proxy's edge reads a request's start into a
        // buffer of its own that lives only while the request does (`http1::conn`).
        let unbuffered_reads = L4BufferSettings::default().read(0);
        let mut listener = ListenerConfig::tcp(&key).l4_buffer(unbuffered_reads);
        if let Some(certificate) = tls {
            // No paths: with a resolver, pingora reads no file (and cannot panic on one).
            let Ok(mut settings) = TlsSettings::intermediate("", "") else { unreachable!("it only builds a struct") };
            settings.set_cert_resolver(certificate);
            listener = listener.tls(settings);
        }
        service.add_listener(listener);
        let mut fds = Fds::new();
        fds.add(key, socket.listener.into_raw_fd());
        Self { inner: service, fds: Arc::new(parking_lot::Mutex::new(fds)) }
    }
}

#[async_trait::async_trait]
impl<S: Service> Service for Prebound<S> {
    async fn start_service(&mut self, _fds: Option<ListenFds>, shutdown: ShutdownWatch, listeners_per_fd: usize) {
        self.inner.start_service(Some(Arc::clone(&self.fds)), shutdown, listeners_per_fd).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_named_in_order_from_fd_3() {
        let table = parse(None, Some("2"), Some("proxy:admin")).unwrap();
        assert_eq!(table["proxy"], 3);
        assert_eq!(table["admin"], 4);
        let mine = std::process::id().to_string();
        assert_eq!(parse(Some(&mine), Some("1"), Some("proxy")).unwrap()["proxy"], 3);
    }

    #[test]
    fn nothing_passed_or_passed_to_another_process_is_nothing() {
        assert!(parse(None, None, None).unwrap().is_empty());
        assert!(parse(Some("1"), Some("2"), Some("proxy:admin")).unwrap().is_empty());
    }

    #[test]
    fn a_bad_count_or_missing_names_are_errors() {
        assert!(parse(None, Some("two"), None).unwrap_err().contains("not a number"));
        assert!(parse(None, Some("2"), None).unwrap_err().contains("named"));
        assert!(parse(None, Some("2"), Some("proxy")).unwrap_err().contains("named"));
        assert!(parse(None, Some("2"), Some("proxy:proxy")).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_key() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = take("nobody-passed-this", "listen.proxy", held.local_addr().unwrap()).unwrap_err();
        assert!(err.to_string().contains("listen.proxy"), "{err}");
    }

    #[test]
    fn port_0_binds_a_port_the_os_chose() {
        let socket = take("nobody-passed-this", "listen.admin", "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.addr.port();
        assert_ne!(port, 0);
        assert_eq!(socket.into_std().local_addr().unwrap().port(), port);
    }
}
