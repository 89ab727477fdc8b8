//! The proxy listener's access log: one line per call, as text or as one JSON object
//! (`proxy.access_log_format`), formatted into a buffer and written to stderr in batches, as
//! nginx's buffered `access_log` is: a buffer past [`FLUSH_AT`] (hundreds of lines) is handed to
//! a thread of its own, which writes it and, at least every [`FLUSH_EVERY`], the lines since. No
//! request waits on the disk unless the thread falls [`MAX_QUEUED`] buffers behind.
//! It does not go through `tracing` (whose subscriber formats and writes each event under a
//! lock, about 2.6 µs a call), so `WXGATE_LOG` does not filter it: `proxy.access_log` does.
//!
//! A line never holds a token, a key or a body: the query's token and key values are `...`.

use super::resolve::{Route, RouteKind, Scope};
use crate::config::AccessLogFormat as Format;
use crate::AppId;
use parking_lot::{Condvar, Mutex};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A buffer this large is written at once.
const FLUSH_AT: usize = 64 * 1024;
/// Lines wait at most this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Full buffers waiting for the writer thread (4 MiB); past this, a full buffer is written where
/// it filled: the disk is behind, and the requests wait, as nginx's do.
const MAX_QUEUED: usize = 64;

/// Per request: what the access log and the metrics need. Only the route's kind (for the
/// metrics) is kept when the access log is off: no clock is read and nothing is copied.
pub struct CallCtx {
    /// When the call began; `None` when the access log is off.
    started: Option<Instant>,
    /// What the request was resolved as; `None` until it is (and for one refused first).
    pub(super) kind: Option<RouteKind>,
    client: Option<Arc<str>>,
    /// The path WeChat sees, without the query (which carries the token).
    path: LinePath,
    authorizer: Option<AppId>,
    /// WeChat's errcode, when its answer was read whole.
    pub(super) errcode: Option<i64>,
    /// WeChat's HTTP status; 0 until it answered.
    pub(super) wechat_status: u16,
    /// Replayed with a new token after WeChat refused the first.
    pub(super) retried: bool,
    /// How long WeChat took to answer (the head; all attempts).
    upstream_ms: Option<u64>,
}

impl CallCtx {
    pub(super) fn new(logged: bool) -> Self {
        Self {
            started: logged.then(Instant::now),
            kind: None,
            client: None,
            path: LinePath::Request,
            authorizer: None,
            errcode: None,
            wechat_status: 0,
            retried: false,
            upstream_ms: None,
        }
    }

    /// Keeps what the line tells of the resolved request: its client, path and account.
    pub(super) fn note(&mut self, route: &Route<'_>, req: &http::request::Parts) {
        let (client, path, scope) = match route {
            Route::Own => (None, req.uri.path(), None),
            Route::TokenEndpoint(call) => (Some(call.client), req.uri.path(), call.scope.as_ref()),
            Route::Ticket(call) => (Some(call.client), req.uri.path(), Some(&call.scope)),
            Route::Api(call) => (Some(call.client), call.outbound.path(), Some(&call.scope)),
        };
        self.client = client.map(|c| c.name.clone());
        let asked = req.uri.path();
        self.path = match asked.strip_suffix(path) {
            Some(prefix) => LinePath::After(prefix.len()),
            None => LinePath::Own(path.to_owned()),
        };
        self.authorizer = match scope {
            Some(Scope::Authorizer(appid)) => Some(*appid),
            _ => None,
        };
    }

    /// WeChat answered (the time it took is the upstream's measure: no clock is read here).
    pub(super) fn answered(&mut self, answer: &super::upstream::Answer<'_>) {
        if self.started.is_some() {
            self.upstream_ms = Some(self.upstream_ms.unwrap_or(0) + answer.waited().as_millis() as u64);
        }
    }

    /// The call's line, answered `status`.
    pub(super) fn write(&self, log: &AccessLog, req: &http::request::Parts, status: u16) {
        let authorizer = self.authorizer.map(|a| a.as_str());
        let end = Instant::now();
        let line = Line {
            method: req.method.as_str(),
            path: self.path.of(req),
            query: req.uri.query().unwrap_or_default(),
            status,
            errcode: self.errcode,
            scope: RouteKind::label(self.kind),
            authorizer: authorizer.as_deref(),
            client: self.client.as_deref(),
            upstream_ms: self.upstream_ms,
            total_ms: self.started.map_or(0, |t| end.saturating_duration_since(t).as_millis() as u64),
            retried: self.retried,
        };
        log.write(&line, end);
    }
}

/// The path a line shows, mostly the request's own less the `/{appid}` it began with: kept as
/// where it starts, so that a call copies nothing for its line.
enum LinePath {
    Request,
    /// The request's path from this byte on.
    After(usize),
    /// A path the request does not end with (decoded).
    Own(String),
}

impl LinePath {
    fn of<'r>(&'r self, req: &'r http::request::Parts) -> &'r str {
        match self {
            Self::Request => req.uri.path(),
            Self::After(start) => req.uri.path().get(*start..).unwrap_or_default(),
            Self::Own(path) => path,
        }
    }
}

/// Query parameters whose values never appear in a line: tokens, keys, codes, and the sender
/// of a pushed message (personal data).
const HIDDEN: [&str; 10] = [
    "access_token",
    "component_access_token",
    "key",
    "secret",
    "auth_code",
    "pre_auth_code",
    "code",
    "openid",
    "js_code",
    "refresh_token",
];

/// Writes `query` with the values of [`HIDDEN`] parameters replaced by `...`, each piece through
/// `put` (which escapes it for the line's format): no copy of the query is made.
fn put_query(out: &mut Vec<u8>, query: &str, put: fn(&mut Vec<u8>, &str)) {
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match pair.split_once('=') {
            Some((k, _)) if HIDDEN.contains(&k) => {
                put(out, k);
                out.extend_from_slice(b"=...");
            }
            _ => put(out, pair),
        }
    }
}

/// A query as its line shows it.
#[cfg(test)]
pub(super) fn redacted_query(query: &str) -> String {
    let mut out = Vec::new();
    put_query(&mut out, query, |out, piece| out.extend_from_slice(piece.as_bytes()));
    String::from_utf8(out).unwrap_or_default()
}

/// One call, as its line tells it.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// As the client sent it: the line shows token and key values as `...`.
    pub query: &'a str,
    pub status: u16,
    /// WeChat's, when its answer had one.
    pub errcode: Option<i64>,
    pub scope: &'static str,
    pub authorizer: Option<&'a str>,
    pub client: Option<&'a str>,
    pub upstream_ms: Option<u64>,
    pub total_ms: u64,
    /// Replayed with a new token after WeChat refused the first.
    pub retried: bool,
}

pub struct AccessLog {
    format: Format,
    buf: Mutex<Buffer>,
    /// Full buffers for the writer thread, oldest first.
    full: Mutex<Vec<Vec<u8>>>,
    ready: Condvar,
    /// The writer thread runs; without it, full buffers are written where they fill.
    writer: AtomicBool,
}

struct Buffer {
    lines: Vec<u8>,
    /// The wall clock at an instant, taken again at each flush: a line's time is reckoned from
    /// it and the instant its call ended, so that a line reads no clock of its own (clock reads
    /// were a tenth of a logged call's cost on a virtual machine).
    anchor: Anchor,
    /// The second whose time prefix `stamp` holds, so that it is formatted once a second.
    second: u64,
    stamp: String,
}

impl AccessLog {
    /// A log in `format`, flushed by a thread of its own for as long as the log lives.
    pub fn start(format: Format) -> Arc<Self> {
        let log = Arc::new(Self {
            format,
            buf: Mutex::new(Buffer {
                lines: Vec::with_capacity(FLUSH_AT * 2),
                anchor: Anchor::now(),
                second: u64::MAX,
                stamp: String::new(),
            }),
            full: Mutex::new(Vec::new()),
            ready: Condvar::new(),
            writer: AtomicBool::new(true),
        });
        let weak = Arc::downgrade(&log);
        let flusher = std::thread::Builder::new().name("wxgate-access-log".into()).spawn(move || flush_loop(&weak));
        if let Err(e) = flusher {
            log.writer.store(false, Ordering::Relaxed);
            tracing::warn!(error = %e, "no thread for the access log: lines are written when its buffer fills");
        }
        log
    }

    /// Adds `line`, of a call that ended `at`; writes the buffer when it is full.
    pub fn write(&self, line: &Line<'_>, at: Instant) {
        let mut buf = self.buf.lock();
        let now = buf.anchor.wall_time(at);
        buf.refresh_stamp(now.as_secs());
        let Buffer { lines, stamp, .. } = &mut *buf;
        let millis = now.subsec_millis();
        match self.format {
            Format::Text => text(lines, stamp, millis, line),
            Format::Json => json(lines, stamp, millis, line),
        }
        if buf.lines.len() >= FLUSH_AT {
            let full = std::mem::replace(&mut buf.lines, Vec::with_capacity(FLUSH_AT * 2));
            drop(buf);
            self.hand_over(full);
        }
    }

    /// A full buffer to the writer thread, or written here when there is none or it is behind.
    fn hand_over(&self, lines: Vec<u8>) {
        if self.writer.load(Ordering::Relaxed) {
            let mut queue = self.full.lock();
            if queue.len() < MAX_QUEUED {
                queue.push(lines);
                drop(queue);
                self.ready.notify_one();
                return;
            }
        }
        emit(&lines);
    }

    /// Writes the full buffers waiting, oldest first.
    fn write_queued(&self) {
        let queued = std::mem::take(&mut *self.full.lock());
        for lines in queued {
            emit(&lines);
        }
    }

    /// Writes what is waiting and what the buffer holds.
    pub fn flush(&self) {
        self.write_queued();
        let anchor = Anchor::now();
        let lines = {
            let mut buf = self.buf.lock();
            buf.anchor = anchor;
            std::mem::take(&mut buf.lines)
        };
        if !lines.is_empty() {
            emit(&lines);
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread: full buffers as they come, everything at least every [`FLUSH_EVERY`].
fn flush_loop(log: &Weak<AccessLog>) {
    let mut flushed = Instant::now();
    loop {
        let Some(log) = log.upgrade() else { return };
        {
            let mut queue = log.full.lock();
            if queue.is_empty() {
                let left = FLUSH_EVERY.saturating_sub(flushed.elapsed());
                log.ready.wait_for(&mut queue, left);
            }
        }
        log.write_queued();
        if flushed.elapsed() >= FLUSH_EVERY {
            log.flush();
            flushed = Instant::now();
        }
    }
}

/// One write of whole lines, under stderr's lock, so that no other log line lands inside one.
fn emit(lines: &[u8]) {
    let _ = std::io::stderr().lock().write_all(lines);
}

/// The wall clock and the monotonic clock read together.
struct Anchor {
    instant: Instant,
    since_epoch: Duration,
}

impl Anchor {
    fn now() -> Self {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self { instant: Instant::now(), since_epoch }
    }

    /// The wall-clock time (since the epoch) of `at`.
    fn wall_time(&self, at: Instant) -> Duration {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.since_epoch + after,
            None => self.since_epoch.saturating_sub(self.instant - at),
        }
    }
}

impl Buffer {
    fn refresh_stamp(&mut self, second: u64) {
        if self.second != second {
            self.second = second;
            self.stamp = utc_second(second);
        }
    }
}

fn text(out: &mut Vec<u8>, stamp: &str, millis: u32, l: &Line<'_>) {
    out.extend_from_slice(stamp.as_bytes());
    millis_of(out, millis);
    out.extend_from_slice(b"Z  INFO wxgate::access: method=");
    out.extend_from_slice(l.method.as_bytes());
    out.extend_from_slice(b" path=");
    one_line(out, l.path);
    out.extend_from_slice(b" query=");
    put_query(out, l.query, one_line);
    out.extend_from_slice(b" status=");
    decimal(out, l.status);
    out.extend_from_slice(b" errcode=");
    text_number(out, l.errcode);
    out.extend_from_slice(b" scope=");
    out.extend_from_slice(l.scope.as_bytes());
    out.extend_from_slice(b" authorizer=");
    out.extend_from_slice(l.authorizer.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" client=");
    one_line(out, l.client.unwrap_or("-"));
    out.extend_from_slice(b" upstream_ms=");
    text_number(out, l.upstream_ms);
    out.extend_from_slice(b" ms=");
    decimal(out, l.total_ms);
    out.extend_from_slice(if l.retried { b" retried=true\n" } else { b" retried=false\n" });
}

/// `.mmm` of a time stamp.
fn millis_of(out: &mut Vec<u8>, millis: u32) {
    let m = millis.min(999);
    out.extend_from_slice(&[b'.', b'0' + (m / 100) as u8, b'0' + (m / 10 % 10) as u8, b'0' + (m % 10) as u8]);
}

/// A number in decimal, without the machinery of `core::fmt`.
fn decimal(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A piece of a text line: a line break in it (a percent-decoded path) is written as a space,
/// so that it cannot start a line of its own.
fn one_line(out: &mut Vec<u8>, piece: &str) {
    let start = out.len();
    out.extend_from_slice(piece.as_bytes());
    if piece.bytes().any(|b| b == b'\n' || b == b'\r') {
        out[start..].iter_mut().filter(|b| **b == b'\n' || **b == b'\r').for_each(|b| *b = b' ');
    }
}

fn text_number(out: &mut Vec<u8>, value: Option<impl itoa::Integer>) {
    match value {
        Some(n) => decimal(out, n),
        None => out.push(b'-'),
    }
}

fn json(out: &mut Vec<u8>, stamp: &str, millis: u32, l: &Line<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(stamp.as_bytes());
    millis_of(out, millis);
    out.extend_from_slice(b"Z\",\"method\":");
    string(out, l.method);
    out.extend_from_slice(b",\"path\":");
    string(out, l.path);
    out.extend_from_slice(b",\"query\":\"");
    put_query(out, l.query, escaped);
    out.extend_from_slice(b"\",\"status\":");
    decimal(out, l.status);
    out.extend_from_slice(b",\"errcode\":");
    number(out, l.errcode);
    out.extend_from_slice(b",\"scope\":\"");
    out.extend_from_slice(l.scope.as_bytes());
    out.extend_from_slice(b"\",\"authorizer\":");
    optional(out, l.authorizer);
    out.extend_from_slice(b",\"client\":");
    optional(out, l.client);
    out.extend_from_slice(b",\"upstream_ms\":");
    number(out, l.upstream_ms);
    out.extend_from_slice(b",\"total_ms\":");
    decimal(out, l.total_ms);
    out.extend_from_slice(if l.retried { b",\"retried\":true}\n" } else { b",\"retried\":false}\n" });
}

fn optional(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, value: Option<impl itoa::Integer>) {
    match value {
        Some(n) => decimal(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string (RFC 8259 §7).
fn string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escaped(out, value);
    out.push(b'"');
}

/// `value` inside a JSON string: quotes, backslashes and control characters escaped.
fn escaped(out: &mut Vec<u8>, value: &str) {
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for b in value.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < 0x20 => {
                let _ = write!(out, "\\u{b:04x}");
            }
            b => out.push(b),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a unix second, in UTC.
fn utc_second(unix: u64) -> String {
    let secs = unix % 86_400;
    let (year, month, day) = crate::civil::date_of_days((unix / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests;
