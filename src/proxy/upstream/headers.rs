//! The headers of one hop: what the request to WeChat carries and what of WeChat's answer the
//! client gets (RFC 9110 §7.6.1: neither hop's own headers pass on).

use crate::http1::wire::connection_tokens;
use pingora::http::ResponseHeader;

/// Request headers that are the gateway's, or that the gateway sets itself.
pub(super) const OWN_REQUEST_HEADERS: [&str; 5] =
    ["authorization", "proxy-authorization", "host", "content-length", "expect"];

/// Headers of this hop only, in both directions (RFC 9110 §7.6.1), besides those the message
/// names in `Connection`.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

pub(super) fn header_line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for piece in [name, b": ", value, b"\r\n"] {
        head.extend_from_slice(piece);
    }
}

/// Whether header `name` is for this hop only: a hop-by-hop header, or one the message names
/// in `Connection` (`HTTP2-Settings`, ...). `connection`: whether the message has one at all.
pub(super) fn is_hop_by_hop(headers: &http::HeaderMap, connection: bool, name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || (connection && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name)))
}

/// The answer's header as the client gets it: without this hop's headers. For an answer read
/// whole, the length is `whole_body` (the server's own `Content-Length` when it says the same).
/// Changed in place: nothing is copied.
pub fn downstream_header(mut header: Box<ResponseHeader>, whole_body: Option<usize>) -> Box<ResponseHeader> {
    // One pass over the names finds whether there is anything to remove: most answers have
    // at most `Connection`, and a lookup by name for each hop-by-hop header hashed each one.
    let hop_by_hop = header.headers.keys().any(|name| HOP_BY_HOP.contains(&name.as_str()));
    if hop_by_hop {
        strip_hop_by_hop(&mut header, whole_body.is_none());
    }
    if let Some(len) = whole_body {
        let mut lengths = header.headers.get_all(http::header::CONTENT_LENGTH).iter();
        let said = lengths.next().and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<usize>().ok());
        let kept = said == Some(len) && lengths.next().is_none();
        if !kept {
            header.remove_header(&http::header::CONTENT_LENGTH);
            // A header named by `http` is always valid: this cannot fail.
            let _ = header.insert_header(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
    }
    header
}

/// Removes this hop's headers from an answer that has some: those `Connection` names, then
/// the hop-by-hop ones. `streamed`: a chunked answer then loses the length it may also claim.
fn strip_hop_by_hop(header: &mut ResponseHeader, streamed: bool) {
    // Named in `Connection` besides its own tokens (`close`, `keep-alive`): rare, so a name is
    // made and the list allocated only then.
    let named: Vec<http::HeaderName> = connection_tokens(&header.headers)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
        .filter_map(|t| http::HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in &named {
        header.remove_header(name);
    }
    if streamed && header.headers.contains_key(http::header::TRANSFER_ENCODING) {
        // Read by its chunks, whatever length it also claims: the client's framing is the
        // edge's own (the length if there is one, else chunks).
        header.remove_header(&http::header::CONTENT_LENGTH);
    }
    for name in HOP_BY_HOP {
        if header.headers.contains_key(name) {
            header.remove_header(name);
        }
    }
}
