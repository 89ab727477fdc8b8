//! The gateway's own HTTP/1.1, both ways: the exchange on a connection to WeChat (the request
//! goes out in one write, the answer's head is parsed once into the header the client gets),
//! and what the client side ([`super::session`]) shares with it: reads and writes under a
//! timeout, and a body framed by its length, its chunks or the connection's end (RFC 9112 §6).
//!
//! pingora's sessions did the same with more per call: a session built for each one, two
//! digests, a boxed header with a case map, and a timer registered for every read. Here a read
//! or write registers a timer only when it has to wait.

pub use super::framing::{codings, connection_tokens, content_length, ends_chunked, keeps_alive};
use super::grammar::{chunk_extensions_ok, digits, is_field_line};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

/// A head larger than this is refused: WeChat's are a few hundred bytes, an SDK's call's not
/// much more.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 128;
/// What a read asks for at least: a small answer, head and body, comes in one.
const READ_SIZE: usize = 8 * 1024;
/// A chunk's size line or a trailer line longer than this is refused.
const MAX_LINE: usize = 4 * 1024;

/// Why a read or write on a connection failed, on either side: it names no part of the
/// request or the answer, nor the side, which only the caller knows ([`H1Error::on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum H1Error {
    #[error("nothing was sent or taken within the timeout")]
    TimedOut,
    #[error("the connection closed before the message was complete")]
    Closed,
    #[error("the connection failed: {0}")]
    Io(std::io::ErrorKind),
    #[error("the message is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
}

/// Which end of the gateway a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A client of the gateway (an app, an SDK, a browser, WeChat pushing).
    Client,
    /// WeChat (the upstream).
    Wechat,
}

/// An [`H1Error`] with the side it happened on, for log lines: a slow client is not logged as
/// WeChat not answering.
#[derive(Debug, Clone, Copy)]
pub struct OnSide(Side, H1Error);

impl H1Error {
    pub fn on(self, side: Side) -> OnSide {
        OnSide(side, self)
    }
}

impl std::fmt::Display for OnSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.0 {
            Side::Client => "client",
            Side::Wechat => "WeChat",
        };
        write!(f, "{side}: {}", self.1)
    }
}

/// Writes `bytes` and flushes them, within `timeout` (on the connection's `timer`): the
/// connection's writes are buffered.
pub async fn write(stream: &mut Stream, bytes: &[u8], timer: &mut Timer, timeout: Duration) -> Result<(), H1Error> {
    timer.within(timeout, stream.write_all(bytes)).await?;
    timer.within(timeout, stream.flush()).await
}

/// The end of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a piece of a body as it is, or framed as a chunk (RFC 9112 §7.1) when `chunked`.
pub async fn write_piece(
    stream: &mut Stream,
    piece: &[u8],
    chunked: bool,
    timer: &mut Timer,
    timeout: Duration,
) -> Result<(), H1Error> {
    if !chunked || piece.is_empty() {
        return write(stream, piece, timer, timeout).await;
    }
    let mut framed = Vec::with_capacity(piece.len() + 20);
    framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
    framed.extend_from_slice(piece);
    framed.extend_from_slice(b"\r\n");
    write(stream, &framed, timer, timeout).await
}

/// Reads `stream` into `buf`, within `timeout` (on the connection's `timer`); the number of
/// bytes read (0: the connection's end).
pub async fn read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    timer: &mut Timer,
    timeout: Duration,
) -> Result<usize, H1Error> {
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    timer.within(timeout, stream.read_buf(buf)).await
}

/// A connection's timer for its reads and writes that have to wait, made at the first and moved
/// for each one after: tokio moves a timer later with a compare-and-swap, where a timer made
/// for each wait (an answer from WeChat always has to be waited for) is put into the runtime's
/// wheel and taken out again, under its lock, on every call. Most I/O here is ready at once (a
/// write into the socket's buffer, a read of an answer that has arrived): it is tried first,
/// and the clock is read only for I/O that has to wait.
#[derive(Debug, Default)]
pub struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// `io` within `timeout`: tried first, and timed only if it has to wait.
    pub async fn within<T>(
        &mut self,
        timeout: Duration,
        io: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, H1Error> {
        let mut io = std::pin::pin!(io);
        if let Some(done) = io.as_mut().now_or_never() {
            return done.map_err(|e| H1Error::Io(e.kind()));
        }
        let due = tokio::time::Instant::now() + timeout;
        let sleep = match &mut self.0 {
            Some(sleep) => {
                sleep.as_mut().reset(due);
                sleep
            }
            empty => empty.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        std::future::poll_fn(|cx| match io.as_mut().poll(cx) {
            Poll::Ready(done) => Poll::Ready(done.map_err(|e| H1Error::Io(e.kind()))),
            Poll::Pending => sleep.as_mut().poll(cx).map(|()| Err(H1Error::TimedOut)),
        })
        .await
    }
}

/// How the rest of a body is delimited, and so where its decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are still to come.
    Length(usize),
    Chunked(Chunk),
    /// The body ends with the connection.
    UntilClose,
    /// The body is over.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data, with this many bytes still to come.
    Data(usize),
    /// At the line end after a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk, this many lines into it.
    Trailers(usize),
}

/// An answer whose head has been read: its header, and its body as far as it has been read.
#[derive(Debug)]
pub struct Response {
    pub header: Box<ResponseHeader>,
    pub body: ResponseBody,
}

/// What has been read of an answer's body, and how the rest is framed.
#[derive(Debug)]
pub struct ResponseBody {
    framing: Framing,
    /// Read and not yet handed out.
    buf: BytesMut,
    keepalive: bool,
}

impl Response {
    /// Reads the answer's head, passing over interim (1xx) answers. `no_body`: the request was
    /// HEAD, whose answer has a length but no body.
    pub async fn read(
        stream: &mut Stream,
        timer: &mut Timer,
        no_body: bool,
        timeout: Duration,
    ) -> Result<Self, H1Error> {
        let mut buf = BytesMut::new();
        loop {
            if let Some(response) = parse_head(&mut buf, no_body)? {
                return Ok(response);
            }
            if buf.len() >= MAX_HEAD {
                return Err(H1Error::Malformed("the head is too large"));
            }
            if read(stream, &mut buf, timer, timeout).await? == 0 {
                return Err(H1Error::Closed);
            }
        }
    }
}

impl ResponseBody {
    /// The next piece of the body; `None` once it is over.
    pub async fn next(
        &mut self,
        stream: &mut Stream,
        timer: &mut Timer,
        timeout: Duration,
    ) -> Result<Option<Bytes>, H1Error> {
        loop {
            if let Some(step) = self.decode()? {
                return Ok(step);
            }
            if read(stream, &mut self.buf, timer, timeout).await? == 0 {
                if self.framing != Framing::UntilClose {
                    return Err(H1Error::Closed);
                }
                (self.framing, self.keepalive) = (Framing::Done, false);
            }
        }
    }

    /// Whether the connection can carry another call: the body was read to its end, the server
    /// keeps it open, and sent nothing after the answer.
    pub fn reusable(&self) -> bool {
        self.framing == Framing::Done && self.keepalive && self.buf.is_empty()
    }

    fn decode(&mut self) -> Result<Option<Option<Bytes>>, H1Error> {
        self.framing.decode(&mut self.buf)
    }
}

impl Framing {
    /// What the bytes read so far (`buf`) give: a piece of the body, its end (`Some(None)`),
    /// or nothing until more is read (`None`). What follows the body's end stays in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Bytes>>, H1Error> {
        loop {
            match *self {
                Framing::Done => return Ok(Some(None)),
                Framing::Length(_) | Framing::UntilClose | Framing::Chunked(Chunk::Data(_)) if buf.is_empty() => {
                    return Ok(None)
                }
                Framing::Length(left) => {
                    let piece = buf.split_to(left.min(buf.len())).freeze();
                    let left = left - piece.len();
                    *self = if left == 0 { Framing::Done } else { Framing::Length(left) };
                    return Ok(Some(Some(piece)));
                }
                Framing::UntilClose => return Ok(Some(Some(buf.split().freeze()))),
                Framing::Chunked(Chunk::Data(left)) => {
                    let piece = buf.split_to(left.min(buf.len())).freeze();
                    let left = left - piece.len();
                    *self = Framing::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                    return Ok(Some(Some(piece)));
                }
                Framing::Chunked(at) => {
                    let Some(line) = line(buf)? else { return Ok(None) };
                    *self = match at {
                        Chunk::Size => match chunk_size(&line)? {
                            0 => Framing::Chunked(Chunk::Trailers(0)),
                            n => Framing::Chunked(Chunk::Data(n)),
                        },
                        Chunk::DataEnd if line.is_empty() => Framing::Chunked(Chunk::Size),
                        Chunk::DataEnd => return Err(H1Error::Malformed("a chunk is longer than its size")),
                        Chunk::Trailers(_) if line.is_empty() => Framing::Done,
                        Chunk::Trailers(n) if n >= MAX_HEADERS => {
                            return Err(H1Error::Malformed("too many trailer lines"))
                        }
                        // A trailer line is passed over, once it is seen to be one.
                        Chunk::Trailers(_) if !is_field_line(&line) => {
                            return Err(H1Error::Malformed("a trailer line is not a field"))
                        }
                        Chunk::Trailers(n) => Framing::Chunked(Chunk::Trailers(n + 1)),
                        // Data is taken by the arm above, never here.
                        Chunk::Data(left) => Framing::Chunked(Chunk::Data(left)),
                    };
                }
            }
        }
    }
}

/// The next line of a chunked body, without its CRLF; `None` until it is all read. A line
/// ended by a bare LF is refused: read one way here, it could be read another further on.
fn line(buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && buf[end - 1] == b'\r' => {
            let line = buf.split_to(end - 1).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        Some(_) => Err(H1Error::Malformed("a chunk line does not end with CRLF")),
        None if buf.len() > MAX_LINE => Err(H1Error::Malformed("a chunk line is too long")),
        None => Ok(None),
    }
}

/// A chunk's size: hexadecimal digits, then maybe extensions after `;`, each of which must be
/// well-formed (RFC 9112 §7.1.1): an extension read one way here could be read another further on.
fn chunk_size(line: &[u8]) -> Result<usize, H1Error> {
    let (size, extensions) = match line.iter().position(|b| *b == b';') {
        Some(at) => line.split_at(at),
        None => (line, &b""[..]),
    };
    // Whitespace may stand before the `;` of an extension (BWS), not before the size.
    let size = size.trim_ascii_end();
    let malformed = H1Error::Malformed("a chunk size is not a hexadecimal number");
    if size.is_empty() || size.len() > 15 {
        return Err(malformed);
    }
    if !chunk_extensions_ok(extensions) {
        return Err(H1Error::Malformed("a chunk extension is not well-formed"));
    }
    digits(size, 16).ok_or(malformed)
}

/// The answer whose head `buf` begins with, once the head is all there; interim (1xx) answers
/// before it are passed over. What follows the head stays in `buf`.
fn parse_head(buf: &mut BytesMut, no_body: bool) -> Result<Option<Response>, H1Error> {
    loop {
        let answer_len =
            head_len(buf, |buf, headers| uninit_parse(&mut httparse::Response::new(&mut []), buf, headers));
        let Some(len) = answer_len.map_err(head_error)? else { return Ok(None) };
        if let Some(mut response) = response(buf.split_to(len).freeze(), no_body)? {
            response.body.buf = buf.split();
            return Ok(Some(response));
        }
    }
}

/// How long the head at the start of `buf` is, once it is all there: found by its empty line
/// ([`crlf_head_end`]), or for an odd head by `parse`, httparse's parser for requests or answers.
pub fn head_len(
    buf: &[u8],
    parse: impl for<'h, 'b> FnOnce(&'b [u8], &'h mut [MaybeUninit<httparse::Header<'b>>]) -> httparse::Result<usize>,
) -> Result<Option<usize>, httparse::Error> {
    if let Some(end) = crlf_head_end(buf) {
        return Ok(Some(end));
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    Ok(match parse(buf, &mut headers)? {
        httparse::Status::Complete(len) => Some(len),
        httparse::Status::Partial => None,
    })
}

fn head_error(e: httparse::Error) -> H1Error {
    match e {
        httparse::Error::TooManyHeaders => H1Error::Malformed("too many headers"),
        _ => H1Error::Malformed("the head does not parse"),
    }
}

/// Where a head ends (just past its empty line) when it has all arrived and each of its lines
/// ends with CRLF, as all but odd heads' do: found by looking for line ends, so that the head
/// is split off first and parsed once. `None` otherwise (not all there yet, a line ended by a
/// bare LF, empty lines before it), and the parser finds where it ends.
pub fn crlf_head_end(buf: &[u8]) -> Option<usize> {
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return None;
    }
    let mut line_start = 0;
    for lf in memchr::memchr_iter(b'\n', buf) {
        if lf == 0 || buf[lf - 1] != b'\r' {
            return None;
        }
        if lf - 1 == line_start {
            return Some(lf + 1);
        }
        line_start = lf + 1;
    }
    None
}

/// httparse with its strict defaults, given room for headers uninitialised: zeroing room for
/// [`MAX_HEADERS`] for each head cost more than the parse.
fn uninit_parse<'h, 'b>(
    parsed: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> httparse::Result<usize> {
    httparse::ParserConfig::default().parse_response_with_uninit_headers(parsed, buf, headers)
}

/// The answer with head `head` (the whole head, split off what was read), or `None` for an
/// interim (1xx) one. The header's values share `head`'s memory: no value is copied.
fn response(head: Bytes, no_body: bool) -> Result<Option<Response>, H1Error> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    match uninit_parse(&mut parsed, &head, &mut headers).map_err(head_error)? {
        httparse::Status::Complete(len) if len == head.len() => {}
        // Where the head ends was found by the same rules: this is a head no reading can take.
        _ => return Err(H1Error::Malformed("the head does not parse")),
    }
    match parsed.code.unwrap_or_default() {
        101 => return Err(H1Error::Malformed("an upgrade was not asked for")),
        100..=199 => return Ok(None),
        _ => {}
    }
    let status = StatusCode::from_u16(parsed.code.unwrap_or_default())
        .map_err(|_| H1Error::Malformed("the status is not a number from 100 to 999"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| H1Error::Malformed("a header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| H1Error::Malformed("a header value"))?;
        map.append(name, value);
    }
    let keepalive = keeps_alive(version, &map);
    let framing = framing(status, no_body, &map)?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    (parts.status, parts.version, parts.headers) = (status, version, map);
    let body = ResponseBody { keepalive: keepalive && framing != Framing::UntilClose, framing, buf: BytesMut::new() };
    Ok(Some(Response { header: Box::new(ResponseHeader::from(parts)), body }))
}

/// How the body is delimited (RFC 9112 §6.3).
fn framing(status: StatusCode, no_body: bool, headers: &HeaderMap) -> Result<Framing, H1Error> {
    if no_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if let Some(chunked) = ends_chunked(headers) {
        if headers.contains_key(CONTENT_LENGTH) {
            // RFC 9112 §6.3: a sign of smuggling or splitting, to be handled as an error.
            return Err(H1Error::Malformed("both Content-Length and Transfer-Encoding"));
        }
        // Only a body whose last coding is chunked ends by itself; any other ends with the
        // connection.
        return Ok(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose });
    }
    Ok(match content_length(headers).map_err(H1Error::Malformed)? {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Reads WeChat's answer from `data`: its head, then its body to the end or the first error.
pub(super) fn fuzz_read(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // What follows the head is in the answer's own buffer.
    if let Ok(Some(mut response)) = parse_head(&mut buf, false) {
        while let Ok(Some(Some(piece))) = response.body.decode() {
            assert!(!piece.is_empty(), "a body piece is never empty");
        }
    }
}

/// Decodes a request body from `buf` to its end; whether it ended (rather than failed or
/// wanting more). The pieces together are never longer than what was read.
pub(super) fn fuzz_body(body: &mut Framing, buf: &mut BytesMut) -> bool {
    let available = buf.len();
    let mut taken = 0;
    loop {
        match body.decode(buf) {
            Ok(Some(Some(piece))) => {
                taken += piece.len();
                assert!(taken <= available, "a body gave more than was read");
            }
            Ok(Some(None)) => return true,
            Ok(None) | Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests;
