//! The load generator: WeChat's side of the message URL, lean enough not to be what is measured.
//!
//! `conns` keep-alive connections, each a task that takes the next push's slot (push `i` is due
//! at `start + i / rate`), waits for it, seals it (AES and signature, as WeChat does), writes
//! one request and reads one answer. Open loop: a push's latency runs from its slot, so a stall
//! counts for every push it delays, and a push waiting for a free connection counts that wait.
//! Raw HTTP/1.1 over tokio's TCP, no client library: a request costs a few microseconds here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use wxgate::crypto::MsgCrypt;

/// How one push was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Success,
    /// 503: refused, for WeChat to retry.
    Refused,
    /// Anything else: another status, a broken connection.
    Failed,
}

/// Every push's answer and latency (µs from its slot), by push number.
pub struct Results {
    pub answers: Vec<Answer>,
    pub latency_us: Vec<u32>,
}

pub struct Load {
    pub target: SocketAddr,
    /// The path after the host, up to the query's signature part: `/wxgate/callback/{appid}`.
    pub path: String,
    pub crypt: MsgCrypt,
    pub rate: u64,
    pub total: u64,
    pub conns: usize,
    /// The push's XML for message number `n`.
    pub message: fn(u64) -> String,
}

impl Load {
    pub async fn run(self) -> Results {
        let load = Arc::new(self);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..load.conns {
            let (load, next) = (Arc::clone(&load), Arc::clone(&next));
            tasks.spawn(async move { load.connection(&next, start).await });
        }
        let total = load.total as usize;
        let mut results = Results { answers: vec![Answer::Failed; total], latency_us: vec![u32::MAX; total] };
        while let Some(done) = tasks.join_next().await {
            for (i, answer, us) in done.expect("a pusher task") {
                results.answers[i as usize] = answer;
                results.latency_us[i as usize] = us;
            }
        }
        results
    }

    /// One connection's share of the pushes: (push number, answer, latency in µs).
    async fn connection(&self, next: &AtomicU64, start: Instant) -> Vec<(u64, Answer, u32)> {
        let mut done = Vec::new();
        let mut conn: Option<TcpStream> = None;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.total {
                return done;
            }
            let due = start + Duration::from_nanos(i * 1_000_000_000 / self.rate);
            tokio::time::sleep_until(due).await;
            let request = self.request(i);
            let answer = match conn.as_mut() {
                Some(c) => exchange(c, &request, &mut buf).await,
                None => None,
            };
            // A connection the gateway closed is opened again and the push sent on the new one.
            let answer = match answer {
                Some(a) => Some(a),
                None => match TcpStream::connect(self.target).await {
                    Ok(c) => {
                        c.set_nodelay(true).ok();
                        let c = conn.insert(c);
                        exchange(c, &request, &mut buf).await
                    }
                    Err(_) => None,
                },
            };
            let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if answer.as_ref().is_none_or(|a| a.closes) {
                conn = None;
            }
            let answer = match answer {
                Some(Exchanged { status: 200, success: true, .. }) => Answer::Success,
                Some(Exchanged { status: 503, .. }) => Answer::Refused,
                _ => Answer::Failed,
            };
            done.push((i, answer, us));
        }
    }

    fn request(&self, i: u64) -> Vec<u8> {
        let nonce = format!("n{i}");
        let sealed = self.crypt.seal(&(self.message)(i), "1700000000", &nonce);
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            sealed.encrypt
        );
        format!(
            "POST {}?signature=x&timestamp=1700000000&nonce={nonce}&openid=o_user&encrypt_type=aes&msg_signature={} HTTP/1.1\r\n\
             Host: wxgate\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            sealed.msg_signature,
            body.len()
        )
        .into_bytes()
    }
}

/// Writes `request` and reads one answer; `None` if the connection broke.
async fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Option<Exchanged> {
    conn.write_all(request).await.ok()?;
    buf.clear();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if read_more(conn, buf).await? == 0 {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    while buf.len() < head_end + length {
        if read_more(conn, buf).await? == 0 {
            return None;
        }
    }
    Some(Exchanged { status, success: &buf[head_end..head_end + length] == b"success", closes })
}

struct Exchanged {
    status: u16,
    success: bool,
    /// The gateway closes the connection after this answer.
    closes: bool,
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut chunk)).await.ok()?.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    Some(n)
}
