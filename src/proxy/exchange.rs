//! The answer to a proxied call: a small JSON answer is read whole before anything reaches the
//! client, so that a token error (40001, 40014, 42001) can be answered by replacing that exact
//! token (single-flight, compare-and-swap) and replaying the call once; anything else streams
//! through.

use super::upstream::{downstream_header, Answer, CallFailure};
use crate::http1::H1Error;
use crate::http1::Session;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;

/// Only answers up to this size are read whole and checked for a token error; WeChat's error
/// answers are a few dozen bytes.
const INSPECT_LIMIT: usize = 64 * 1024;

/// Whether the answer is worth reading whole before the client sees it: small JSON (or the
/// text/plain WeChat sometimes labels JSON with).
pub fn inspectable(resp: &ResponseHeader) -> bool {
    let small = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= INSPECT_LIMIT);
    let textual = resp.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(b"text/plain")
    });
    small && textual
}

/// Reads an inspectable answer's body whole. A body that arrives in one piece (a small
/// answer) is returned as it is, without a copy.
pub async fn read_whole(answer: &mut Answer<'_>) -> std::result::Result<Bytes, CallFailure> {
    let Some(first) = answer.body().await? else { return Ok(Bytes::new()) };
    if first.len() > INSPECT_LIMIT {
        return Err(CallFailure::Broken);
    }
    let Some(second) = answer.body().await? else { return Ok(first) };
    let mut body = BytesMut::with_capacity(first.len() + second.len());
    body.extend_from_slice(&first);
    if body.len() + second.len() > INSPECT_LIMIT {
        return Err(CallFailure::Broken);
    }
    body.extend_from_slice(&second);
    while let Some(chunk) = answer.body().await? {
        if body.len() + chunk.len() > INSPECT_LIMIT {
            return Err(CallFailure::Broken);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Whether an answer's errcode says WeChat refused the token: 40001 (invalid or not the
/// latest), 40014 (invalid), 42001 (expired).
pub fn is_token_error(errcode: Option<i64>) -> bool {
    errcode.is_some_and(|c| matches!(c, 40001 | 40014 | 42001))
}

/// The errcode of a JSON answer, if it has one. Parsed only when the body mentions an errcode.
pub fn errcode(body: &[u8]) -> Option<i64> {
    if let Some(code) = leading_errcode(body) {
        return Some(code);
    }
    if !body.windows(7).any(|w| w == b"errcode") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Errcode {
        errcode: Option<i64>,
    }
    serde_json::from_slice::<Errcode>(body).ok().and_then(|e| e.errcode)
}

/// The errcode of an answer that begins with it, as WeChat writes every answer that has one
/// (`{"errcode":0,"errmsg":"ok"}`), read without a JSON parser: it is the object's first key,
/// so it is the top level's. `None` for any other shape, which is then parsed.
fn leading_errcode(body: &[u8]) -> Option<i64> {
    let rest = body.strip_prefix(br#"{"errcode":"#)?;
    let negative = rest.first() == Some(&b'-');
    let digits = &rest[usize::from(negative)..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    // A number ends at `,` or `}` (WeChat writes no spaces); anything else is parsed whole.
    if len == 0 || len > 12 || !matches!(digits.get(len), Some(b',' | b'}')) {
        return None;
    }
    let value = std::str::from_utf8(&digits[..len]).ok()?.parse::<i64>().ok()?;
    Some(if negative { -value } else { value })
}

/// Streams the rest of the answer to the client, chunk by chunk: memory stays flat whatever
/// the size (a media download). An error (either side's) leaves the answer cut short, and the
/// client's connection is not reused.
pub async fn stream_to(client: &mut Session<'_>, answer: &mut Answer<'_>) -> Result<(), H1Error> {
    client.answer_head(&downstream_header(Box::new(answer.header().clone()), None)).await?;
    while let Some(chunk) = answer.body().await? {
        client.answer_piece(&chunk).await?;
    }
    client.answer_end().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_are_recognised_and_nothing_else() {
        let is_token_error = |body: &[u8]| is_token_error(errcode(body));
        assert!(is_token_error(
            br#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 1"}"#
        ));
        assert!(is_token_error(br#"{"errcode":42001,"errmsg":"access_token expired"}"#));
        assert!(is_token_error(br#"{"errmsg":"x","errcode":40014}"#));
        assert!(!is_token_error(br#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(!is_token_error(br#"{"errcode":45009,"errmsg":"reach max api daily quota limit"}"#));
        assert!(!is_token_error(br#"{"subscribe":1,"nickname":"40001"}"#));
        assert!(!is_token_error(b"not json errcode 40001"));
    }

    #[test]
    fn a_leading_errcode_is_read_as_the_parser_reads_it() {
        for body in [
            &br#"{"errcode":0,"errmsg":"ok"}"#[..],
            br#"{"errcode":40001,"errmsg":"invalid credential"}"#,
            br#"{"errcode":-1,"errmsg":"system error"}"#,
            br#"{"errcode":45009}"#,
            br#"{"errcode": 40001}"#,
            br#"{"errcode":40001.5}"#,
            br#"{"errcode":"40001"}"#,
            br#"{"errcode":4000100000000000000000}"#,
            br#"{"errcode":}"#,
            br#"{"data":{"errcode":40001}}"#,
        ] {
            #[derive(serde::Deserialize)]
            struct Errcode {
                errcode: Option<i64>,
            }
            let parsed = serde_json::from_slice::<Errcode>(body).ok().and_then(|e| e.errcode);
            assert_eq!(errcode(body), parsed, "{}", String::from_utf8_lossy(body));
        }
    }
}
