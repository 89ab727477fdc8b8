//! One request on a client connection, read and answered by the gateway's own HTTP/1.1
//! (RFC 9112): its head parsed once into `http`'s types (the values sharing the bytes read),
//! its body decoded as a handler reads it, and its answer written with the head and, for a
//! body known whole, in one write.
//!
//! pingora's server session did the same with more per request: a boxed session, a request
//! header with a case map, room for 256 headers zeroed, a write buffer: most of a small
//! call's allocations. The connection and its deadlines are [`super::conn`]'s.

use super::conn::Conn;
use super::wire::{self, Chunk, Framing, H1Error, MAX_HEAD, MAX_HEADERS};
use crate::reply::Reply;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use pingora::http::ResponseHeader;
use std::fmt::Write;
use std::mem::MaybeUninit;
use std::time::Duration;

/// Each read of a request body and each write of an answer must progress within this:
/// nginx's `client_body_timeout` and `send_timeout`.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// What is left of a body the handler did not read is read and dropped, up to this, so that
/// the connection can take the next request; past it the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Why a request was not read: a head that is not HTTP/1.1 gets 400 with the reason; a
/// connection that ended or timed out gets nothing.
#[derive(Debug)]
pub enum Unread {
    Malformed(&'static str),
    /// Well-formed, but framed by a transfer coding the gateway does not apply (501).
    NotImplemented(&'static str),
    Gone(H1Error),
}

impl Unread {
    /// The status a refused head is answered with, and why; `None` for a connection that ended.
    pub fn refusal(&self) -> Option<(u16, &'static str)> {
        match self {
            Self::Malformed(why) => Some((400, why)),
            Self::NotImplemented(why) => Some((501, why)),
            Self::Gone(_) => None,
        }
    }
}

/// How the answer's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body: the answer to HEAD, 204, 304.
    Empty,
    Length,
    Chunked,
    /// HTTP/1.0 without a length: the body ends with the connection.
    UntilClose,
}

/// A request whose head has been read, and its answer.
pub struct Session<'c> {
    conn: &'c mut Conn,
    req: http::request::Parts,
    body: Framing,
    /// Whether the connection takes another request after this one.
    keepalive: bool,
    /// The answer's status once its head is written, and how its body goes out.
    answered: Option<(StatusCode, Out)>,
    /// The client waits for `100 Continue` before it sends the body (`Expect: 100-continue`):
    /// sent when the body is first read, so that a call refused without its body is not sent it.
    expect_continue: bool,
}

impl<'c> Session<'c> {
    /// Reads the next request's head from `conn`, which has begun to arrive.
    pub async fn read(conn: &'c mut Conn) -> Result<Session<'c>, Unread> {
        loop {
            if let Some((req, body, keepalive)) = parse_request(conn.buf())? {
                let expect_continue = body != Framing::Done
                    && req.version == Version::HTTP_11
                    && req.headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                return Ok(Self { conn, req, body, keepalive, answered: None, expect_continue });
            }
            if conn.buf().len() >= MAX_HEAD {
                return Err(Unread::Malformed("the request head is larger than 64 KiB"));
            }
            match conn.fill_head().await {
                Ok(0) => return Err(Unread::Gone(H1Error::Closed)),
                Ok(_) => {}
                Err(e) => return Err(Unread::Gone(e)),
            }
        }
    }

    /// Answers a request whose head could not be read with `reply`; the connection closes.
    pub async fn refuse(conn: &'c mut Conn, reply: Reply) {
        let Ok(header) = reply.header() else { return };
        let (req, ()) = http::Request::new(()).into_parts();
        let mut session =
            Self { conn, req, body: Framing::Done, keepalive: false, answered: None, expect_continue: false };
        session.answer_whole(&header, reply.body).await.ok();
    }

    pub fn req(&self) -> &http::request::Parts {
        &self.req
    }

    /// The next piece of the request body; `None` once it is all read.
    pub async fn body_piece(&mut self) -> Result<Option<Bytes>, H1Error> {
        loop {
            if let Some(step) = self.body.decode(self.conn.buf())? {
                return Ok(step);
            }
            if std::mem::take(&mut self.expect_continue) {
                let (stream, timer) = self.conn.io();
                wire::write(stream, b"HTTP/1.1 100 Continue\r\n\r\n", timer, CLIENT_IO_TIMEOUT).await?;
            }
            if self.conn.fill(CLIENT_IO_TIMEOUT).await? == 0 {
                return Err(H1Error::Closed);
            }
        }
    }

    /// The answer's status, once its head is written.
    pub fn answered(&self) -> Option<StatusCode> {
        self.answered.map(|(status, _)| status)
    }

    /// The connection closes after this answer (`Connection: close`).
    pub fn close_after(&mut self) {
        self.keepalive = false;
    }

    /// Writes a whole answer, head and body in one write; its length is the body's.
    pub async fn answer_whole(&mut self, header: &ResponseHeader, body: Bytes) -> Result<(), H1Error> {
        let mut out = self.head(header, Some(body.len()));
        if matches!(self.answered, Some((_, Out::Length))) {
            out.extend_from_slice(&body);
        }
        let (stream, timer) = self.conn.io();
        wire::write(stream, &out, timer, CLIENT_IO_TIMEOUT).await
    }

    /// Writes the head of an answer whose body follows in pieces ([`Session::answer_piece`],
    /// then [`Session::answer_end`]): framed by the header's own length if it has one, else
    /// chunked (HTTP/1.0: until the connection's end).
    pub async fn answer_head(&mut self, header: &ResponseHeader) -> Result<(), H1Error> {
        let out = self.head(header, None);
        let (stream, timer) = self.conn.io();
        wire::write(stream, &out, timer, CLIENT_IO_TIMEOUT).await
    }

    pub async fn answer_piece(&mut self, piece: &[u8]) -> Result<(), H1Error> {
        let (stream, timer) = self.conn.io();
        match self.answered {
            Some((_, Out::Empty)) | None => Ok(()),
            Some((_, out)) => wire::write_piece(stream, piece, out == Out::Chunked, timer, CLIENT_IO_TIMEOUT).await,
        }
    }

    pub async fn answer_end(&mut self) -> Result<(), H1Error> {
        let (stream, timer) = self.conn.io();
        match self.answered {
            Some((_, Out::Chunked)) => wire::write(stream, wire::LAST_CHUNK, timer, CLIENT_IO_TIMEOUT).await,
            _ => Ok(()),
        }
    }

    /// Ends the request: whether the connection can take the next one. What the handler left
    /// of the body is read and dropped, up to [`DRAIN_LIMIT`]; past it, or when the connection
    /// closes anyway, the connection is marked as having left some of the request unread.
    pub async fn finish(mut self) -> bool {
        if self.keepalive && self.answered.is_some() {
            let mut drained = 0;
            loop {
                match self.body_piece().await {
                    Ok(Some(piece)) if drained + piece.len() <= DRAIN_LIMIT => drained += piece.len(),
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => {
                        self.conn.request_done();
                        return true;
                    }
                }
            }
        }
        if self.body != Framing::Done {
            self.conn.left_unread();
        }
        false
    }

    /// The answer's head, with this hop's `Connection`, `Date` and framing headers; `whole`:
    /// the length of a body written with it.
    fn head(&mut self, header: &ResponseHeader, whole: Option<usize>) -> BytesMut {
        let status = header.status;
        let out = if self.req.method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
        {
            Out::Empty
        } else if whole.is_some() || header.headers.contains_key(CONTENT_LENGTH) {
            Out::Length
        } else if self.req.version == Version::HTTP_11 {
            Out::Chunked
        } else {
            self.keepalive = false;
            Out::UntilClose
        };
        self.answered = Some((status, out));
        // RFC 9110 §8.6: a 1xx or 204 has no Content-Length, and a 304's could only be the length
        // of what a 200 would carry, never of the empty body here: none is written.
        let lengthless =
            matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) || status.is_informational();
        let whole = whole.filter(|_| !lengthless);
        let drainable = match self.body {
            Framing::Done => true,
            // A client still waiting for `100 Continue` may send its body or not.
            Framing::Length(n) => n <= DRAIN_LIMIT && !self.expect_continue,
            _ => false,
        };
        if !drainable {
            // What is left of the body is not read to reuse the connection: the client is
            // told that it closes.
            self.keepalive = false;
        }
        let mut head = BytesMut::with_capacity(256 + 48 * header.headers.len() + whole.unwrap_or(0));
        head.put_slice(b"HTTP/1.1 ");
        head.put_slice(status.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        head.put_slice(b"\r\n");
        for (name, value) in &header.headers {
            if name == CONTENT_LENGTH && (whole.is_some() || lengthless)
                || name == TRANSFER_ENCODING
                || name == http::header::CONNECTION
            {
                continue;
            }
            put_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(len) = whole {
            // Writing into a BytesMut does not fail.
            let _ = write!(head, "content-length: {len}\r\n");
        }
        if out == Out::Chunked {
            put_header(&mut head, b"transfer-encoding", b"chunked");
        }
        put_header(&mut head, b"date", pingora::protocols::http::date::get_cached_date().as_bytes());
        put_header(&mut head, b"connection", if self.keepalive { b"keep-alive" } else { b"close" });
        head.put_slice(b"\r\n");
        head
    }
}

fn put_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.put_slice(name);
    head.put_slice(b": ");
    head.put_slice(value);
    head.put_slice(b"\r\n");
}

/// The request whose head `buf` begins with, once the head is all there: its head, how its
/// body is framed, and whether the client keeps the connection open. What follows the head
/// stays in `buf`.
fn parse_request(buf: &mut BytesMut) -> Result<Option<(http::request::Parts, Framing, bool)>, Unread> {
    let head_len = wire::head_len(buf, |buf, headers| parse(&mut httparse::Request::new(&mut []), buf, headers));
    let Some(len) = head_len.map_err(head_error)? else { return Ok(None) };
    request(&buf.split_to(len).freeze()).map(Some)
}

fn parse<'h, 'b>(
    parsed: &mut httparse::Request<'h, 'b>,
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> httparse::Result<usize> {
    httparse::ParserConfig::default().parse_request_with_uninit_headers(parsed, buf, headers)
}

fn head_error(e: httparse::Error) -> Unread {
    match e {
        httparse::Error::TooManyHeaders => Unread::Malformed("more than 128 request headers"),
        _ => Unread::Malformed("the request head does not parse"),
    }
}

/// The request with head `head` (the whole head, split off what was read), parsed once: the
/// header values and the target share its memory.
fn request(head: &Bytes) -> Result<(http::request::Parts, Framing, bool), Unread> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parse(&mut parsed, head, &mut headers).map_err(head_error)? {
        httparse::Status::Complete(len) if len == head.len() => {}
        // Where the head ends was found by the same rules: no reading of it can take it.
        _ => return Err(Unread::Malformed("the request head does not parse")),
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| Unread::Malformed("the method is not a token"))?;
    let target = head.slice_ref(parsed.path.unwrap_or_default().as_bytes());
    let uri = Uri::from_maybe_shared(target).map_err(|_| Unread::Malformed("the request target is not a URI"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Unread::Malformed("a header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice_ref(h.value)).map_err(|_| Unread::Malformed("a header value"))?;
        map.append(name, value);
    }
    let body = framing(&map)?;
    let keepalive = wire::keeps_alive(version, &map);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    (parts.method, parts.uri, parts.version, parts.headers) = (method, uri, version, map);
    Ok((parts, body, keepalive))
}

/// How the request body is delimited (RFC 9112 §6.3): a request framed two ways is refused, as
/// is one whose codings do not end with chunked (its end cannot be found) and a length that is
/// not one number; codings before chunked, which the gateway does not apply, get 501 (§6.1).
fn framing(headers: &HeaderMap) -> Result<Framing, Unread> {
    if let Some(chunked) = wire::ends_chunked(headers) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(Unread::Malformed("both Content-Length and Transfer-Encoding"));
        }
        if !chunked {
            return Err(Unread::Malformed("a Transfer-Encoding that does not end with chunked"));
        }
        if wire::codings(headers).count() > 1 {
            return Err(Unread::NotImplemented("a transfer coding other than chunked"));
        }
        return Ok(Framing::Chunked(Chunk::Size));
    }
    Ok(match wire::content_length(headers).map_err(Unread::Malformed)? {
        None | Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
    })
}

impl Session<'_> {
    /// Writes one of the gateway's own replies, head and body in one write.
    pub async fn reply(&mut self, reply: Reply) -> Result<(), H1Error> {
        // Only a Location that is not a header value fails, and no reply makes one.
        let header = reply.header().map_err(|_| H1Error::Malformed("a reply's header"))?;
        self.answer_whole(&header, reply.body).await
    }
}

impl crate::reply::RequestBody for Session<'_> {
    fn headers(&self) -> &HeaderMap {
        &self.req().headers
    }

    async fn piece(&mut self) -> Result<Option<Bytes>, ()> {
        self.body_piece().await.map_err(|_| ())
    }
}

/// Reads requests one after another from `data`, each body decoded, as a connection would.
pub(super) fn fuzz_read(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Each head read is split off `buf`, so the loop ends.
    while let Ok(Some((_, mut body, _))) = parse_request(&mut buf) {
        if !wire::fuzz_body(&mut body, &mut buf) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
