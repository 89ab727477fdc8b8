//! What a message's headers say about its framing and its connection, for requests and
//! answers alike (RFC 9112 §6, §9): its transfer codings, its one length, whether the peer
//! keeps the connection open.

use super::grammar::digits;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

/// Whether the peer keeps the connection open after this message (a request, or an answer):
/// HTTP/1.1 unless it says `close`, HTTP/1.0 only if it says `keep-alive`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    match version {
        Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

/// Whether a message's last transfer coding is chunked; `None` without `Transfer-Encoding`.
pub fn ends_chunked(headers: &HeaderMap) -> Option<bool> {
    headers.get(TRANSFER_ENCODING)?;
    Some(codings(headers).last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")))
}

/// A message's transfer codings in order, over all its `Transfer-Encoding` lines, without the
/// empty list elements RFC 9110 §5.6.1 says to pass over.
pub fn codings(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
}

/// A message's `Content-Length`, if it has one: refused unless every one is the same number.
/// RFC 9112 §6.3: the value is `1*DIGIT` (a sign, inner space or list is refused, since another
/// hop could read it otherwise); only the field's own surrounding whitespace is allowed.
pub fn content_length(headers: &HeaderMap) -> Result<Option<usize>, &'static str> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = digits(value.as_bytes().trim_ascii(), 10);
        match (n, length) {
            (None, _) => return Err("Content-Length is not a number"),
            (Some(n), Some(seen)) if n != seen => return Err("two different Content-Lengths"),
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length)
}

/// The tokens of a message's `Connection` headers (`close`, `keep-alive`, header names), trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}
