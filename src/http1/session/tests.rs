use super::*;

fn parsed(head: &str) -> Result<(http::request::Parts, Framing, bool), &'static str> {
    let mut buf = BytesMut::from(head.as_bytes());
    match parse_request(&mut buf) {
        Ok(Some(parsed)) => Ok(parsed),
        Ok(None) => Err("partial"),
        Err(Unread::Malformed(why) | Unread::NotImplemented(why)) => Err(why),
        Err(Unread::Gone(_)) => Err("gone"),
    }
}

#[test]
fn a_head_gives_its_parts_framing_and_keep_alive() {
    let (req, body, keepalive) =
        parsed("POST /wx/cgi-bin/x?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello")
            .unwrap();
    assert_eq!((req.method, req.uri.path(), req.uri.query()), (Method::POST, "/wx/cgi-bin/x", Some("a=1")));
    assert_eq!(req.headers.get_all("x-a").iter().count(), 2);
    assert_eq!((body, keepalive), (Framing::Length(5), true));
    let (_, body, keepalive) = parsed("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((body, keepalive), (Framing::Done, false));
    assert!(parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().2);
    assert!(!parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().2);
    let (_, body, _) = parsed("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked, \r\n\r\n").unwrap();
    assert_eq!(body, Framing::Chunked(Chunk::Size));
    // RFC 9112 §6.1: a coding the gateway does not apply (it would pass on a body still coded).
    assert_eq!(
        parsed("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").err(),
        Some("a transfer coding other than chunked")
    );
}

#[test]
fn heads_framed_badly_or_not_http_are_refused_with_a_reason() {
    for (head, why) in [
        ("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end with chunked"),
        ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "two different"),
        ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "not a number"),
        // RFC 9112 §6.3: 1*DIGIT and nothing else, for a request that another hop reads too.
        ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", "not a number"),
        ("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\nhello", "not a number"),
        ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello", "not a number"),
        ("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello", "not a number"),
        ("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", "not a number"),
        ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "not a number"),
        ("GET / HTTP/2.0\r\n\r\n", "does not parse"),
        ("GET /a b HTTP/1.1\r\n\r\n", "does not parse"),
    ] {
        let got = parsed(head).err().unwrap_or("parsed");
        assert!(got.contains(why), "{head:?}: {got}");
    }
    assert_eq!(parsed("GET / HTTP/1.1\r\nHost: x\r\n").err(), Some("partial"));
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(MAX_HEADERS + 1));
    assert!(parsed(&many).unwrap_err().contains("more than 128"));
}

#[test]
fn what_follows_a_head_stays_for_the_body_and_the_next_request() {
    let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n"[..]);
    let (_, mut body, _) = parse_request(&mut buf).ok().flatten().unwrap();
    assert_eq!(body.decode(&mut buf).unwrap(), Some(Some(Bytes::from_static(b"hi"))));
    assert_eq!(body.decode(&mut buf).unwrap(), Some(None));
    assert!(parse_request(&mut buf).ok().flatten().is_some());
    assert!(buf.is_empty());
}

#[test]
fn an_odd_head_is_read_as_the_parser_reads_it() {
    // Lines ended by bare LFs and empty lines before the request: httparse takes both, and
    // finds the end itself when the scan for CRLF CRLF does not.
    for head in
        ["GET /a HTTP/1.1\nHost: x\n\n", "\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n", "GET /a HTTP/1.1\r\nHost: x\n\r\n"]
    {
        let (req, body, keepalive) = parsed(head).unwrap_or_else(|e| panic!("{head:?}: {e}"));
        assert_eq!(
            (req.uri.path(), req.headers["host"].as_bytes(), body, keepalive),
            ("/a", &b"x"[..], Framing::Done, true),
            "{head:?}"
        );
    }
    assert_eq!(parsed("GET /a HTTP/1.1\nHost: x\n").err(), Some("partial"));
    assert_eq!(wire::crlf_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
    assert_eq!(wire::crlf_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    assert_eq!(wire::crlf_head_end(b"GET / HTTP/1.1\nHost: x\r\n\r\n"), None);
}

/// What the test server does with each request.
#[derive(Clone, Copy)]
enum Answer {
    /// `ok` whole, the body left unread.
    Whole,
    /// Read the body, then answer its length in two pieces, without a length.
    Pieces,
    /// An empty answer whole, with this status.
    Empty(u16),
}

/// Answers as the test asks.
struct Test(Answer);

impl super::super::edge::Answers for Test {
    async fn answer(&self, session: &mut Session<'_>) {
        if respond(session, self.0).await.is_err() {
            session.close_after();
        }
    }
}

/// A server on loopback serving each connection as the edge does, answering as `answer`
/// says; its address.
async fn server(answer: Answer) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let timeouts = super::super::Timeouts { keepalive: Duration::from_secs(5), header: Duration::from_secs(5) };
        let app = std::sync::Arc::new(Test(answer));
        while let Ok((tcp, _)) = listener.accept().await {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            let stream: pingora::protocols::Stream = Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
            tokio::spawn(async move { super::super::edge::serve(&*app, stream, timeouts, shutdown).await });
        }
    });
    addr
}

async fn respond(session: &mut Session<'_>, answer: Answer) -> Result<(), H1Error> {
    match answer {
        Answer::Whole => {
            let reply = Reply::text(200, "ok");
            session.answer_whole(&reply.header().unwrap(), reply.body).await
        }
        Answer::Empty(status) => {
            let reply = Reply::text(status, "");
            session.answer_whole(&reply.header().unwrap(), reply.body).await
        }
        Answer::Pieces => {
            let mut len = 0;
            while let Some(piece) = session.body_piece().await? {
                len += piece.len();
            }
            session.answer_head(&ResponseHeader::build(200, None).unwrap()).await?;
            session.answer_piece(b"read ").await?;
            session.answer_piece(len.to_string().as_bytes()).await?;
            session.answer_end().await
        }
    }
}

/// Sends `request` on `stream` and reads until the server closes or `until` is in what was
/// read; what was read.
async fn sent(stream: &mut tokio::net::TcpStream, request: &[u8], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf));
        match read.await.expect("an answer in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_204_or_304_has_no_length_and_an_empty_200_says_0() {
    for (status, length) in [(204, None), (304, None), (200, Some("content-length: 0\r\n"))] {
        let mut c = connect(server(Answer::Empty(status)).await).await;
        let head = sent(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\n").await.to_ascii_lowercase();
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        match length {
            Some(line) => assert!(head.contains(line), "{head}"),
            None => assert!(!head.contains("content-length"), "{status}: {head}"),
        }
        // The connection goes on: the next request is answered on it.
        let again = sent(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\n").await;
        assert!(again.starts_with(&format!("HTTP/1.1 {status} ")), "{again}");
    }
}

#[tokio::test]
async fn the_answer_to_head_has_no_body_and_the_connection_goes_on() {
    let mut c = connect(server(Answer::Whole).await).await;
    let head = sent(&mut c, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("content-length: 2\r\n"), "{head}");
    assert!(head.contains("connection: keep-alive\r\n") && head.contains("date: "), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after the head: {head:?}");
    let get = sent(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\nok").await;
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n") && get.ends_with("\r\n\r\nok"), "{get:?}");
}

#[tokio::test]
async fn an_answer_without_a_length_is_chunked_for_http_1_1_and_ends_with_the_connection_for_1_0() {
    let addr = server(Answer::Pieces).await;
    let mut c = connect(addr).await;
    let chunked =
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let got = sent(&mut c, chunked.as_bytes(), "0\r\n\r\n").await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nread \r\n1\r\n5\r\n0\r\n\r\n"), "{got:?}");
    let mut old = connect(addr).await;
    let got = sent(&mut old, b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd", "never").await;
    assert!(got.contains("connection: close\r\n") && !got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\nread 4"), "the body ends with the connection: {got:?}");
}

#[tokio::test]
async fn a_small_body_left_unread_is_drained_and_a_large_one_closes_after_the_whole_answer() {
    let addr = server(Answer::Whole).await;
    let mut c = connect(addr).await;
    let small = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}", "x".repeat(1000));
    let got = sent(&mut c, small.as_bytes(), "\r\n\r\nok").await;
    assert!(got.contains("connection: keep-alive\r\n"), "{got}");
    let got = sent(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\nok").await;
    assert!(got.ends_with("\r\n\r\nok"), "the connection took the next request: {got:?}");
    // A body past what is drained: the answer says the connection closes, and arrives whole
    // although the client is still sending when it comes.
    let large = 4 * DRAIN_LIMIT;
    let mut c = connect(addr).await;
    let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {large}\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend(std::iter::repeat_n(b'x', large));
    let got = sent(&mut c, &request, "never").await;
    assert!(got.contains("connection: close\r\n") && got.ends_with("\r\n\r\nok"), "{got:?}");
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_when_the_body_is_read() {
    let mut c = connect(server(Answer::Pieces).await).await;
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    let interim = sent(&mut c, head.as_bytes(), "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    let got = sent(&mut c, b"abc", "0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("read \r\n1\r\n3\r\n0\r\n\r\n"), "{got:?}");
}

#[tokio::test]
async fn a_head_that_is_not_http_gets_400_with_the_reason_and_the_connection_closes() {
    let mut c = connect(server(Answer::Whole).await).await;
    let got = sent(&mut c, b"GET / HTTP/1.1\r\nHost x\r\n\r\n", "never").await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n") && got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with(r#"{"errcode":-20400,"errmsg":"wxgate: the request head does not parse"}"#), "{got}");
}
