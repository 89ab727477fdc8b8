//! The proxy listener's access log: one line per call, as text or as one JSON object
//! (`proxy.access_log_format`), formatted into a buffer and written to stderr in batches, as
//! nginx's buffered `access_log` is: when the buffer passes [`FLUSH_AT`] on the request's path
//! (one write for hundreds of lines) and at least every [`FLUSH_EVERY`] from a thread of its own.
//! It does not go through `tracing` (whose subscriber formats and writes each event under a
//! lock, about 2.6 µs a call), so `WXGATE_LOG` does not filter it: `proxy.access_log` does.
//!
//! A line never holds a token, a key or a body: the query's token and key values are `...`.

use super::resolve::{Route, RouteKind, Scope};
use crate::config::AccessLogFormat as Format;
use crate::AppId;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A buffer this large is written at once.
const FLUSH_AT: usize = 64 * 1024;
/// Lines wait at most this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Per request: what the access log and the metrics need. Only the route's kind (for the
/// metrics) is kept when the access log is off: no clock is read and nothing is copied.
pub struct CallCtx {
    /// When the call began; `None` when the access log is off.
    started: Option<Instant>,
    /// What the request was resolved as; `None` until it is (and for one refused first).
    pub(super) kind: Option<RouteKind>,
    client: Option<String>,
    /// The path WeChat sees, without the query (which carries the token).
    path: String,
    authorizer: Option<AppId>,
    /// WeChat's errcode, when its answer was read whole.
    pub(super) errcode: Option<i64>,
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
            path: String::new(),
            authorizer: None,
            errcode: None,
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
        path.clone_into(&mut self.path);
        self.authorizer = match scope {
            Some(Scope::Authorizer(appid)) => Some(*appid),
            _ => None,
        };
    }

    /// Now, when the access log is on: the start of a call to WeChat.
    pub(super) fn clock(&self) -> Option<Instant> {
        self.started.map(|_| Instant::now())
    }

    /// WeChat answered a call made at `sent`.
    pub(super) fn answered_after(&mut self, sent: Option<Instant>) {
        if let Some(sent) = sent {
            self.upstream_ms = Some(self.upstream_ms.unwrap_or(0) + sent.elapsed().as_millis() as u64);
        }
    }

    /// The call's line, answered `status`.
    pub(super) fn write(&self, log: &AccessLog, req: &http::request::Parts, status: u16) {
        let query = redacted_query(req.uri.query().unwrap_or_default());
        let authorizer = self.authorizer.map(|a| a.as_str());
        log.write(&Line {
            method: req.method.as_str(),
            path: &self.path,
            query: &query,
            status,
            errcode: self.errcode,
            scope: RouteKind::label(self.kind),
            authorizer: authorizer.as_deref(),
            client: self.client.as_deref(),
            upstream_ms: self.upstream_ms,
            total_ms: self.started.map_or(0, |t| t.elapsed().as_millis() as u64),
            retried: self.retried,
        });
    }
}

/// A query with the values of token and key parameters replaced by `...`, for the access log.
pub(super) fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _))
                if matches!(
                    k,
                    "access_token"
                        | "component_access_token"
                        | "key"
                        | "secret"
                        | "auth_code"
                        | "pre_auth_code"
                        | "code"
                        // The sender of a pushed message: personal data.
                        | "openid"
                        | "js_code"
                        | "refresh_token"
                ) =>
            {
                format!("{k}=...")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One call, as its line tells it.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// With token and key values replaced by `...`.
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
}

struct Buffer {
    lines: Vec<u8>,
    /// The second whose time prefix `stamp` holds, so that it is formatted once a second.
    second: u64,
    stamp: String,
}

impl AccessLog {
    /// A log in `format`, flushed by a thread of its own for as long as the log lives.
    pub fn start(format: Format) -> Arc<Self> {
        let log = Arc::new(Self {
            format,
            buf: Mutex::new(Buffer { lines: Vec::with_capacity(FLUSH_AT * 2), second: u64::MAX, stamp: String::new() }),
        });
        let weak = Arc::downgrade(&log);
        let flusher = std::thread::Builder::new().name("wxgate-access-log".into()).spawn(move || flush_loop(&weak));
        if let Err(e) = flusher {
            tracing::warn!(error = %e, "no thread for the access log: lines are written when its buffer fills");
        }
        log
    }

    /// Adds `line`; writes the buffer when it is full.
    pub fn write(&self, line: &Line<'_>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut buf = self.buf.lock();
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
            emit(&full);
        }
    }

    /// Writes what the buffer holds.
    pub fn flush(&self) {
        let lines = std::mem::take(&mut self.buf.lock().lines);
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

fn flush_loop(log: &Weak<AccessLog>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        match log.upgrade() {
            Some(log) => log.flush(),
            None => return,
        }
    }
}

/// One write of whole lines, under stderr's lock, so that no other log line lands inside one.
fn emit(lines: &[u8]) {
    let _ = std::io::stderr().lock().write_all(lines);
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
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{stamp}.{millis:03}Z  INFO wxgate::access: method={} path={} query={} status={} errcode={} scope={} authorizer={} client={} upstream_ms={} ms={} retried={}",
        l.method,
        l.path,
        l.query,
        l.status,
        l.errcode.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        l.scope,
        l.authorizer.unwrap_or("-"),
        l.client.unwrap_or("-"),
        l.upstream_ms.map_or_else(|| "-".to_owned(), |m| m.to_string()),
        l.total_ms,
        l.retried,
    );
    // A path or query with a line break (percent-decoded) must not start a line of its own.
    out.extend(s.bytes().map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, stamp: &str, millis: u32, l: &Line<'_>) {
    let mut s = String::with_capacity(320);
    let _ = write!(s, "{{\"time\":\"{stamp}.{millis:03}Z\",\"method\":");
    string(&mut s, l.method);
    s.push_str(",\"path\":");
    string(&mut s, l.path);
    s.push_str(",\"query\":");
    string(&mut s, l.query);
    let _ = write!(s, ",\"status\":{},\"errcode\":", l.status);
    number(&mut s, l.errcode);
    let _ = write!(s, ",\"scope\":\"{}\",\"authorizer\":", l.scope);
    optional(&mut s, l.authorizer);
    s.push_str(",\"client\":");
    optional(&mut s, l.client);
    s.push_str(",\"upstream_ms\":");
    number(&mut s, l.upstream_ms.map(|m| m as i64));
    let _ = writeln!(s, ",\"total_ms\":{},\"retried\":{}}}", l.total_ms, l.retried);
    out.extend_from_slice(s.as_bytes());
}

fn optional(s: &mut String, value: Option<&str>) {
    match value {
        Some(v) => string(s, v),
        None => s.push_str("null"),
    }
}

fn number(s: &mut String, value: Option<i64>) {
    match value {
        Some(n) => {
            let _ = write!(s, "{n}");
        }
        None => s.push_str("null"),
    }
}

/// A JSON string (RFC 8259 §7): quotes, backslashes and control characters escaped.
fn string(s: &mut String, value: &str) {
    s.push('"');
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// `YYYY-MM-DDTHH:MM:SS` of a unix second, in UTC (the civil-from-days algorithm of
/// H. Hinnant's date library).
fn utc_second(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, client: Option<&'a str>) -> Line<'a> {
        Line {
            method: "GET",
            path,
            query: "openid=o1&access_token=...",
            status: 200,
            errcode: Some(0),
            scope: "authorizer",
            authorizer: Some("wx1111111111111111"),
            client,
            upstream_ms: Some(3),
            total_ms: 4,
            retried: false,
        }
    }

    #[test]
    fn the_access_log_never_shows_a_token_or_key() {
        assert_eq!(
            redacted_query("openid=o&access_token=SECRET&component_access_token=C&key=K"),
            "openid=...&access_token=...&component_access_token=...&key=..."
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let mut out = Vec::new();
        json(&mut out, "2026-12-06T01:02:03", 7, &line("/cgi-bin/a\"b\n", None));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-06T01:02:03.007Z");
        assert_eq!(v["path"], "/cgi-bin/a\"b\n");
        assert_eq!((v["status"].as_u64(), v["errcode"].as_i64(), v["client"].is_null()), (Some(200), Some(0), true));
        for field in ["method", "query", "scope", "authorizer", "upstream_ms", "total_ms", "retried"] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn a_text_line_stays_one_line() {
        let mut out = Vec::new();
        text(&mut out, "2026-12-06T01:02:03", 7, &line("/a\nb", Some("shop")));
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1);
        assert!(s.starts_with("2026-12-06T01:02:03.007Z  INFO wxgate::access: method=GET path=/a b "), "{s}");
        assert!(s.contains(" client=shop ") && s.contains(" errcode=0 "), "{s}");
    }

    #[test]
    fn seconds_are_civil_utc_times() {
        assert_eq!(utc_second(0), "1970-01-01T00:00:00");
        assert_eq!(utc_second(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(utc_second(1_796_518_923), "2026-12-06T01:02:03");
    }
}
