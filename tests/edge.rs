//! Strict HTTP at the proxy listener's edge, each rule over a raw socket: what HTTP clients
//! would never send is sent byte for byte, and nothing refused reaches WeChat.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxgate::sandbox::Sandbox;

const A: &str = "wx1111111111111111";

/// A gateway in front of a sandbox with authorizer A, and `[proxy]` settings from `proxy`.
async fn started(proxy: &str) -> (Setup, Sandbox, Gateway) {
    with_active_authorizer(&format!("\n[proxy]\n{proxy}\n"), A).await
}

/// One answer read off a raw connection: status, head, body (by Content-Length).
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    read_answer_to(stream, false).await
}

/// `head_only` for the answer to HEAD, which has no body whatever its Content-Length.
async fn read_answer_to(stream: &mut TcpStream, head_only: bool) -> Answer {
    read_next(stream, &mut Vec::new(), head_only).await
}

/// The next answer on `stream`, starting with what `buf` holds from an earlier read; what was
/// read past it (pipelined answers can arrive in one read) stays in `buf` for the next.
async fn read_next(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = if head_only {
                0
            } else {
                head.lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            while buf.len() < end + 4 + length {
                read_some(stream, buf, deadline).await;
            }
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = buf.drain(..end + 4 + length).skip(end + 4).collect();
            return Answer { status, head, body };
        }
        read_some(stream, buf, deadline).await;
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
    let mut chunk = [0u8; 8192];
    let n =
        tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await.expect("an answer in time").unwrap();
    assert!(n > 0, "connection closed mid-answer after {:?}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// Sends `request` as it is on a new connection and reads one answer.
async fn exchange(gw: &Gateway, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer_to(&mut stream, request.starts_with(b"HEAD ")).await
}

/// How long until the gateway closes `stream` (reads until end of stream), at most `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut rest)).await.expect("the gateway closed the connection").ok();
    started.elapsed()
}

fn user_info(method: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "{method} /{A}/cgi-bin/user/info?openid=o1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_get_and_post_are_taken_and_case_counts() {
    let (setup, sandbox, gw) = started("").await;
    let ok = exchange(&gw, &user_info("GET", "")).await;
    assert_eq!(ok.status, 200, "{}", ok.head);
    let before = sandbox.stats().api_calls;
    for method in ["TRACE", "get", "Get", "post", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND"] {
        let answer = exchange(&gw, &user_info(method, "")).await;
        assert_eq!(answer.status, 405, "{method}: {}", answer.head);
        if method != "HEAD" {
            let err: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(err["errcode"], -20405, "{method}: {err}");
            assert!(err["errmsg"].as_str().unwrap().starts_with("wxgate: "));
        }
    }
    assert_eq!(sandbox.stats().api_calls, before, "no refused method reached WeChat");
    assert_no_secrets(&setup.log(), &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_host_or_framed_two_ways_get_400_and_are_not_forwarded() {
    let (_setup, sandbox, gw) = started("").await;
    let before = sandbox.stats().api_calls;
    let path = format!("/{A}/cgi-bin/message/custom/send");
    let key = format!("Authorization: Bearer {CLIENT_KEY}\r\n");
    let cases = [
        format!("GET {path} HTTP/1.1\r\n{key}\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n{key}\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{key}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{key}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{key}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ];
    for request in &cases {
        let answer = exchange(&gw, request.as_bytes()).await;
        assert_eq!(answer.status, 400, "{request:?}: {}", answer.head);
    }
    assert_eq!(sandbox.stats().api_calls, before, "nothing refused reached WeChat");
    // HTTP/1.0 has no Host requirement.
    let answer = exchange(&gw, format!("GET /{A}/cgi-bin/user/info HTTP/1.0\r\n{key}\r\n").as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_body_gets_400_before_anything_is_forwarded() {
    let (_setup, sandbox, gw) = started("").await;
    let post = |chunks: &str| {
        format!(
            "POST /{A}/cgi-bin/message/custom/send HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
        )
    };
    let answer = exchange(&gw, post("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_bytes()).await;
    assert_eq!(answer.status, 200, "a well-formed chunked body passes: {}", answer.head);
    assert_eq!(sandbox.requests().pop().unwrap().body_len, 11);
    let before = sandbox.stats().api_calls;
    for chunks in [
        "fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello\n0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let answer = exchange(&gw, post(chunks).as_bytes()).await;
        assert_eq!(answer.status, 400, "{chunks:?}: {}", answer.head);
    }
    assert_eq!(sandbox.stats().api_calls, before, "no malformed body was forwarded, not even its head");
}

/// A chunked body too large to keep for a replay streams through to WeChat as it arrives,
/// chunked again by the gateway's own client, and arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_larger_than_the_replay_limit_streams_through_whole() {
    let (_setup, _sandbox, gw) = started("replay_body_bytes = 1024").await;
    let pieces: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'a' + i; 700 + usize::from(i)]).collect();
    let mut request = format!(
        "POST /{A}/cgi-bin/media/upload?type=image HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in &pieces {
        request.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(&gw, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let whole = pieces.concat();
    let sha1 = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(&whole))
    };
    assert_eq!(body["body_bytes"], whole.len(), "{body}");
    assert_eq!(body["body_sha1"], sha1.as_str(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_named_in_connection_stay_on_this_hop() {
    let (_setup, sandbox, gw) = started("").await;
    let answer = exchange(
        &gw,
        &user_info(
            "GET",
            "Connection: keep-alive, HTTP2-Settings, X-Hop\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX-Hop: 1\r\nX-Kept: 2\r\n",
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = sandbox.requests().pop().unwrap();
    let names: Vec<&str> = seen.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"x-kept"), "{names:?}");
    for hop in ["http2-settings", "x-hop", "connection"] {
        assert!(!names.contains(&hop), "{hop} was forwarded: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let (_setup, _sandbox, gw) = started("keepalive_timeout_secs = 1\nheader_timeout_secs = 30").await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    // Calls 0.6 s apart, for longer than the timeout in all: each wait is within it, so the
    // connection stays open although the first wait's deadline has long passed.
    for call in 0..4 {
        if call > 1 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        stream.write_all(&user_info("GET", "")).await.unwrap();
        assert_eq!(read_answer(&mut stream).await.status, 200, "kept alive between calls");
    }
    let idle = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}, before the timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_head_is_cut_off_after_the_header_timeout() {
    let (setup, sandbox, gw) = started("keepalive_timeout_secs = 30\nheader_timeout_secs = 2").await;
    let before = sandbox.stats().api_calls;
    // A connection that never sends anything.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(gw.proxy).await.unwrap();
    // A head trickled a byte at a time, each well within any per-read timeout.
    let mut slow = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let head = user_info("GET", "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    let mut sent = 0;
    let cut = loop {
        if slow.write_all(&head[sent..=sent]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => panic!("the gateway answered a head it had not received whole"),
            Err(_) => {}
        }
        assert!(sent < head.len(), "the whole head was trickled in {:?} without being cut off", started.elapsed());
    };
    assert!(cut >= Duration::from_millis(1900), "cut after {cut:?}");
    assert!(cut < Duration::from_secs(8), "cut after {cut:?}");
    closed_within(&mut silent, Duration::from_secs(10)).await;
    let idle = opened.elapsed();
    assert!(idle >= Duration::from_millis(1900), "a silent new connection closed after {idle:?}");
    assert_eq!(sandbox.stats().api_calls, before);
    // A kept-alive connection has the keep-alive timeout to start its next head, and then the
    // header timeout for the rest of it.
    let mut kept = TcpStream::connect(gw.proxy).await.unwrap();
    kept.write_all(&user_info("GET", "")).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kept.write_all(&user_info("GET", "")).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.status, 200, "the keep-alive wait is not the header timeout");
    assert!(!setup.log().contains(CLIENT_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_written_together_are_all_answered_in_order_bodies_whole() {
    let (_setup, sandbox, gw) = started("").await;
    // A body longer than the edge's first read, then a second request in the same write: the
    // first read ends inside the body, and the second request begins inside what pingora reads.
    let body = "x".repeat(10_000);
    let post = format!(
        "POST /{A}/cgi-bin/message/custom/send HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut together = post.into_bytes();
    together.extend(user_info("GET", ""));
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(&together).await.unwrap();
    // Both answers may come in one read.
    let mut buf = Vec::new();
    assert_eq!(read_next(&mut stream, &mut buf, false).await.status, 200);
    assert_eq!(read_next(&mut stream, &mut buf, false).await.status, 200);
    assert!(buf.is_empty(), "nothing more than the two answers");
    let seen = sandbox.requests();
    let last_two: Vec<(&str, usize)> = seen.iter().rev().take(2).rev().map(|r| (r.path.as_str(), r.body_len)).collect();
    assert_eq!(last_two, [("/cgi-bin/message/custom/send", 10_000), ("/cgi-bin/user/info", 0)]);
    // And the connection still takes a request sent a byte at a time.
    for byte in user_info("GET", "") {
        stream.write_all(&[byte]).await.unwrap();
    }
    assert_eq!(read_answer(&mut stream).await.status, 200);
}

/// `access_log_format = "json"`: one JSON object per call, every field of the contract there,
/// WeChat's errcode and the account included, no token, key or openid in any of them.
#[tokio::test(flavor = "multi_thread")]
async fn json_access_lines_carry_every_field_and_no_secret() {
    let (setup, _sandbox, gw) = started("access_log_format = \"json\"").await;
    let ok = exchange(&gw, &user_info("GET", "")).await;
    assert_eq!(ok.status, 200, "{}", ok.head);
    let refused = exchange(
        &gw,
        format!("GET /{A}/cgi-bin/user/info?openid=o1&access_token=wrong-key HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.head);
    let lines = || -> Vec<serde_json::Value> {
        setup.log().lines().filter(|l| l.starts_with("{\"time\"")).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let calls = || lines().into_iter().filter(|l| l["scope"] != "own").count();
    eventually(Duration::from_secs(5), "the two calls' lines", || async { calls() >= 2 }).await;
    let lines = lines();
    let call = lines.iter().find(|l| l["status"] == 200 && l["scope"] == "authorizer").expect("the call's line");
    for field in [
        "time",
        "method",
        "path",
        "query",
        "status",
        "errcode",
        "scope",
        "authorizer",
        "client",
        "upstream_ms",
        "total_ms",
        "retried",
    ] {
        assert!(call.get(field).is_some(), "{field} in {call}");
    }
    assert_eq!(call["path"], "/cgi-bin/user/info", "{call}");
    assert_eq!(call["query"], "openid=...", "{call}");
    assert_eq!(
        (call["errcode"].as_i64(), call["authorizer"].as_str(), call["scope"].as_str()),
        (Some(0), Some(A), Some("authorizer"))
    );
    assert!(call["upstream_ms"].as_u64().is_some() && call["retried"] == false, "{call}");
    let refused = lines.iter().find(|l| l["status"] == 401).expect("the refused call's line");
    assert_eq!(refused["query"], "openid=...&access_token=...", "{refused}");
    assert_no_secrets(&setup.log(), &["wrong-key"]);
}
