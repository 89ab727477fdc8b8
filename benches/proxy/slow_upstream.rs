//! The production-shaped run's WeChat: HTTPS (a certificate of the bench's own CA), HTTP/1.1
//! keep-alive, every answer sent DELAY_MS after its request (WeChat is tens of ms away).
//!
//! Usage: slow_upstream PORT CERT KEY DELAY_MS STATS_FILE
//! Every 100 ms STATS_FILE gets "<TLS connections accepted> <requests answered>", so the bench
//! can count the handshakes the proxies cost per call.
//!
//! It shares the load core with wrk, so it must cost little per call: one thread, one task
//! per connection, answers that fall due together written in one write. (A Python asyncio
//! upstream used most of that core at half of the proxies' maximum, and its own queueing was
//! what the added-p99 figure measured.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

const BODY: &str = r#"{"errcode":0,"errmsg":"ok"}"#;

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static ANSWERED: AtomicU64 = AtomicU64::new(0);

struct Args {
    port: u16,
    cert: String,
    key: String,
    delay: Duration,
    stats: String,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [port, cert, key, delay_ms, stats] = a.as_slice() else {
        return Err("usage: slow_upstream PORT CERT KEY DELAY_MS STATS_FILE".into());
    };
    Ok(Args {
        port: port.parse().map_err(|_| format!("PORT: {port:?} is not a port"))?,
        cert: cert.clone(),
        key: key.clone(),
        delay: Duration::from_millis(delay_ms.parse().map_err(|_| format!("DELAY_MS: {delay_ms:?} is not a number"))?),
        stats: stats.clone(),
    })
}

fn tls(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{key}: {e}"))?
        .ok_or_else(|| format!("{key}: no private key"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One connection: each request head read (the bench's calls are GETs, without a body) is
/// answered `delay` after it arrived, in order.
async fn serve(tcp: TcpStream, tls: TlsAcceptor, delay: Duration) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut stream = tls.accept(tcp).await?;
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf = Vec::with_capacity(8192);
    let mut due: VecDeque<Instant> = VecDeque::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let next = due.front().copied();
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                let now = Instant::now();
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    due.push_back(now + delay);
                }
            }
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while due.front().is_some_and(|&at| at <= now) {
                    due.pop_front();
                    out.extend_from_slice(answer.as_bytes());
                    ANSWERED.fetch_add(1, Ordering::Relaxed);
                }
                stream.write_all(&out).await?;
                out.clear();
            }
        }
    }
}

/// A backlog for the thousand connections a proxy opens at once (tokio's default is 1024).
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(4096)
}

async fn stats(path: String) {
    let tmp = format!("{path}.tmp");
    loop {
        let line = format!("{} {}\n", ACCEPTED.load(Ordering::Relaxed), ANSWERED.load(Ordering::Relaxed));
        if std::fs::write(&tmp, line).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            eprintln!("slow_upstream: cannot write {path}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let args = args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(64);
    });
    let tls = tls(&args.cert, &args.key).unwrap_or_else(|e| {
        eprintln!("slow_upstream: {e}");
        std::process::exit(1);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async move {
        let listener = match listen(args.port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("slow_upstream: 127.0.0.1:{}: {e}", args.port);
                std::process::exit(1);
            }
        };
        tokio::spawn(stats(args.stats));
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let (tls, delay) = (tls.clone(), args.delay);
                    tokio::spawn(async move {
                        if let Err(e) = serve(tcp, tls, delay).await {
                            // A proxy closing its pooled connection at the end is normal.
                            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                                eprintln!("slow_upstream: a connection ended: {e}");
                            }
                        }
                    });
                }
                // Out of file descriptors, say: the bench's load is over the limit; go on.
                Err(e) => {
                    eprintln!("slow_upstream: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}
