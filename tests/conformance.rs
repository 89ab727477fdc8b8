//! HTTP/1.1 conformance at the proxy listener, as a table: every request form RFC 9112 and RFC
//! 9110 say a server must reject (or must not forward) is sent byte for byte over a raw socket,
//! and must be refused with its status while nothing reaches WeChat. Forms the RFCs allow are in
//! the table too, so that strictness cannot be had by refusing everything. WeChat's answers get
//! the same rules in `src/http1/wire/tests.rs` (their parser is the same code); a fuzz target
//! (`scripts/fuzz h1`) runs both parsers on arbitrary bytes.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A: &str = "wx1111111111111111";

/// A POST of an API call with `headers` (each ending in CRLF) and `body` after the head.
fn post(headers: &str, body: &str) -> String {
    format!(
        "POST /{A}/cgi-bin/message/custom/send HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n{headers}\r\n{body}"
    )
}

/// A GET of an API call whose head has `headers` after the Host line, or `head` whole.
fn get(headers: &str) -> String {
    format!("GET /{A}/cgi-bin/user/info?openid=o1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n{headers}\r\n")
}

/// The request-form table: (what the RFC says, the request, the statuses it may get).
fn table() -> Vec<(&'static str, String, &'static [u16])> {
    const REFUSED: &[u16] = &[400];
    const UNKNOWN_CODING: &[u16] = &[400, 501];
    const TAKEN: &[u16] = &[200];
    let chunked = |chunks: &str| post("Transfer-Encoding: chunked\r\n", chunks);
    vec![
        // Framing: RFC 9112 §6.1–§6.3, §7.1.
        ("a sign in Content-Length", post("Content-Length: +5\r\n", "hello"), REFUSED),
        ("a negative Content-Length", post("Content-Length: -5\r\n", "hello"), REFUSED),
        ("a space inside Content-Length", post("Content-Length: 5 5\r\n", "hello"), REFUSED),
        ("a hexadecimal Content-Length", post("Content-Length: 0x5\r\n", "hello"), REFUSED),
        ("a Content-Length list of two values", post("Content-Length: 5, 6\r\n", "hello!"), REFUSED),
        ("two differing Content-Lengths", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), REFUSED),
        ("an empty Content-Length", post("Content-Length: \r\n", ""), REFUSED),
        (
            "Transfer-Encoding and Content-Length together",
            post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            REFUSED,
        ),
        ("a coding after chunked", post("Transfer-Encoding: chunked, gzip\r\n", "5\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("only an unknown coding", post("Transfer-Encoding: gzip\r\n", "hello"), REFUSED),
        ("a misspelt chunked", post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("chunked applied twice", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), UNKNOWN_CODING),
        (
            "a coding the gateway does not apply",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            UNKNOWN_CODING,
        ),
        (
            "codings over two lines",
            post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
            UNKNOWN_CODING,
        ),
        ("a chunk size with a sign", chunked("+5\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a chunk size with a space before it", chunked(" 5\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a chunk size in 0x form", chunked("0x5\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a chunk size that overflows", chunked("fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a chunk shorter than its size", chunked("6\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a chunk line ended by a bare LF", chunked("5\nhello\r\n0\r\n\r\n"), REFUSED),
        ("an extension without a name", chunked("5;\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("an extension name that is not a token", chunked("5;a b\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a bare CR in an extension", chunked("5;a=b\rc\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("an unterminated quoted extension value", chunked("5;a=\"b\r\nhello\r\n0\r\n\r\n"), REFUSED),
        ("a trailer line that is not a field", chunked("5\r\nhello\r\n0\r\nnot a field\r\n\r\n"), REFUSED),
        // Heads: RFC 9112 §2.2, §3, §5; RFC 9110 §5.5, §5.6.2.
        ("whitespace before a field's colon", get("X-A : 1\r\n"), REFUSED),
        ("a folded field (obs-fold)", get("X-A: 1\r\n 2\r\n"), REFUSED),
        ("a bare CR in a field value", get("X-A: 1\r2\r\n"), REFUSED),
        ("a NUL in a field value", get("X-A: 1\x002\r\n"), REFUSED),
        ("a field name that is not a token", get("X@A: 1\r\n"), REFUSED),
        ("a field line without a colon", get("X-A 1\r\n"), REFUSED),
        (
            "no Host",
            format!("GET /{A}/cgi-bin/user/info HTTP/1.1\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"),
            REFUSED,
        ),
        ("two Hosts", get("Host: other\r\n"), REFUSED),
        (
            "a Host that is not a host",
            format!("GET /{A}/cgi-bin/user/info HTTP/1.1\r\nHost: a b\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"),
            REFUSED,
        ),
        (
            "two spaces in the request line",
            format!("GET  /{A}/cgi-bin/user/info HTTP/1.1\r\nHost: gw\r\n\r\n"),
            REFUSED,
        ),
        (
            "a request line with a fourth part",
            format!("GET /{A}/cgi-bin/user/info HTTP/1.1 x\r\nHost: gw\r\n\r\n"),
            REFUSED,
        ),
        // What the RFCs allow is taken.
        ("Content-Length with whitespace around it", post("Content-Length:  5 \r\n", "hello"), TAKEN),
        ("the same Content-Length twice", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), TAKEN),
        ("chunked in another case", post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), TAKEN),
        ("extensions that are tokens and quoted strings", chunked("5;a=b;c=\"d e\" ; f\r\nhello\r\n0\r\n\r\n"), TAKEN),
        ("a trailer field", chunked("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"), TAKEN),
        ("a field value with tabs and obs-text", get("X-A: a\tb\u{e9}\r\n"), TAKEN),
    ]
}

/// Sends `request` on a new connection and returns the status of the one answer.
async fn status_of(gw: &Gateway, request: &str) -> u16 {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await;
        let n = read.expect("an answer in time").unwrap();
        assert!(n > 0, "closed with no answer to {request:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_form_the_rfcs_refuse_is_refused_and_none_reaches_wechat() {
    let (setup, sandbox, gw) = with_active_authorizer("", A).await;
    let mut wrong = Vec::new();
    for (what, request, allowed) in table() {
        let before = sandbox.stats().api_calls;
        let status = status_of(&gw, &request).await;
        let forwarded = sandbox.stats().api_calls - before;
        let refused = !allowed.contains(&200);
        if !allowed.contains(&status) || (refused && forwarded > 0) {
            wrong.push(format!("{what}: {status} (want {allowed:?}), {forwarded} forwarded: {request:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} forms answered wrongly:\n{}", wrong.len(), table().len(), wrong.join("\n"));
    assert_no_secrets(&setup.log(), &[]);
}
