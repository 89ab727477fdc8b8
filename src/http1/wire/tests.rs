use super::*;
use tokio::net::{TcpListener, TcpStream};

/// The answer whose head `head` holds, with what `head` has after it as the body read so far.
fn parsed(head: &[u8], no_body: bool) -> Result<Response, H1Error> {
    let mut buf = BytesMut::from(head);
    parse_head(&mut buf, no_body).map(|r| r.expect("the head is complete"))
}

#[test]
fn an_answer_head_with_bare_lf_lines_is_read_as_the_parser_reads_it() {
    let r = parsed(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false).unwrap();
    assert_eq!((r.header.status.as_u16(), r.body.framing, &r.body.buf[..]), (200, Framing::Length(2), &b"ok"[..]));
    let r = parsed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\n\n", false).unwrap();
    assert_eq!((r.header.status.as_u16(), r.body.framing), (204, Framing::Done));
}

/// Feeds `body` to `response` one byte at a time, as if each byte came in a read of its own,
/// and returns the body decoded, or the first error.
fn fed_byte_by_byte(response: &mut Response, body: &[u8]) -> Result<Vec<u8>, H1Error> {
    let mut out = Vec::new();
    let drain = |response: &mut Response, out: &mut Vec<u8>| -> Result<bool, H1Error> {
        while let Some(step) = response.body.decode()? {
            match step {
                Some(piece) => out.extend_from_slice(&piece),
                None => return Ok(true),
            }
        }
        Ok(false)
    };
    if drain(response, &mut out)? {
        return Ok(out);
    }
    for byte in body {
        response.body.buf.extend_from_slice(&[*byte]);
        if drain(response, &mut out)? {
            break;
        }
    }
    Ok(out)
}

#[test]
fn a_length_delimited_body_is_read_in_any_pieces_and_leaves_the_connection_reusable() {
    let whole = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"errcode\":0}";
    let mut r = parsed(whole, false).unwrap();
    assert_eq!(r.header.status, 200);
    assert_eq!(r.header.headers["content-type"], "application/json");
    assert_eq!(fed_byte_by_byte(&mut r, b"").unwrap(), br#"{"errcode":0}"#);
    assert!(r.body.reusable());

    let mut r = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", false).unwrap();
    assert_eq!(fed_byte_by_byte(&mut r, br#"{"errcode":0}"#).unwrap(), br#"{"errcode":0}"#);
    assert!(r.body.reusable());
}

#[test]
fn a_chunked_body_with_extensions_and_trailers_is_decoded_across_any_split() {
    let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false).unwrap();
    let body = b"5;name=v\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n";
    assert_eq!(fed_byte_by_byte(&mut r, body).unwrap(), b"hello world");
    assert!(r.body.reusable());
    assert!(r.body.buf.is_empty());

    let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false).unwrap();
    assert_eq!(fed_byte_by_byte(&mut r, b"").unwrap(), b"hello");
    assert!(r.body.reusable());
}

#[test]
fn malformed_chunks_are_refused() {
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"3\r\nhello\r\n0\r\n\r\n",
        b"\r\n",
        b"1234567890123456\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"-0\r\n\r\n",
    ] {
        let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap();
        assert!(matches!(fed_byte_by_byte(&mut r, body), Err(H1Error::Malformed(_))), "{body:?}");
    }
    let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap();
    assert!(matches!(fed_byte_by_byte(&mut r, &[b'1'; MAX_LINE + 2]), Err(H1Error::Malformed(_))));
    let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap();
    let endless_trailers = [&b"0\r\n"[..], &b"X-T: 1\r\n".repeat(MAX_HEADERS + 1)].concat();
    assert_eq!(fed_byte_by_byte(&mut r, &endless_trailers), Err(H1Error::Malformed("too many trailer lines")));
}

#[test]
fn answers_without_a_body_end_at_their_head() {
    for head in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut r = parsed(head, false).unwrap();
        assert_eq!(fed_byte_by_byte(&mut r, b"").unwrap(), b"");
        assert!(r.body.reusable(), "{head:?}");
    }
    let mut r = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
    assert_eq!(fed_byte_by_byte(&mut r, b"").unwrap(), b"", "an answer to HEAD has no body");
    assert!(r.body.reusable());
}

#[test]
fn interim_answers_are_passed_over() {
    let head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut r = parsed(head, false).unwrap();
    assert_eq!(r.header.status, 200);
    assert!(!r.header.headers.contains_key("link"));
    assert_eq!(fed_byte_by_byte(&mut r, b"").unwrap(), b"ok");
    assert!(matches!(parsed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false), Err(H1Error::Malformed(_))));
}

#[test]
fn a_head_is_taken_only_when_it_is_all_there() {
    let partial = b"HTTP/1.1 200 OK\r\nContent-Len";
    let mut buf = BytesMut::from(&partial[..]);
    assert!(parse_head(&mut buf, false).unwrap().is_none());
    assert_eq!(buf, &partial[..], "nothing is consumed");
}

#[test]
fn which_answers_leave_the_connection_open() {
    let reusable = |head: &[u8]| {
        let mut r = parsed(head, false).unwrap();
        fed_byte_by_byte(&mut r, b"").unwrap();
        r.body.reusable()
    };
    assert!(!reusable(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"));
    assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(reusable(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
    assert!(!reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"), "the server sent more than the answer");
    let r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap();
    assert_eq!(r.body.framing, Framing::UntilClose, "a body not chunked ends with the connection");
    assert!(!r.body.reusable());
}

/// The conformance table for WeChat's answers (tests/conformance.rs has the requests'): what
/// RFC 9112 and RFC 9110 say must not be taken is refused, head or body, and the forms they
/// allow are read.
#[test]
fn answers_the_rfcs_refuse_are_refused() {
    let refused_heads: [&[u8]; 9] = [
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\x002\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX@A: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok",
    ];
    for head in refused_heads {
        assert!(parsed(head, false).is_err(), "{:?}", String::from_utf8_lossy(head));
    }
    let refused_bodies: [&[u8]; 6] = [
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
    ];
    for body in refused_bodies {
        let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap();
        assert!(matches!(fed_byte_by_byte(&mut r, body), Err(H1Error::Malformed(_))), "{body:?}");
    }
    let taken: [&[u8]; 3] =
        [b"5;a=b;c=\"d \\\" e\" ; f\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", b"0\r\n\r\n"];
    for body in taken {
        let mut r = parsed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", false).unwrap();
        assert!(fed_byte_by_byte(&mut r, body).is_ok(), "{body:?}");
    }
}

#[test]
fn malformed_heads_are_refused() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        assert!(matches!(parsed(head, false), Err(H1Error::Malformed(_))), "{head:?}");
    }
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parsed(&many, false).unwrap_err(), H1Error::Malformed("too many headers"));
    assert!(parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", false).is_ok());
}

/// A loopback connection whose far end writes `pieces` one after another, then closes, or
/// with `hold`, stays open without writing more.
async fn serving(pieces: Vec<&'static [u8]>, hold: bool) -> Stream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        for piece in pieces {
            // The client may have stopped reading (a head too large): that ends the server.
            if sock.write_all(piece).await.is_err() || sock.flush().await.is_err() {
                return;
            }
        }
        if hold {
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
        }
    });
    Box::new(pingora::protocols::l4::stream::Stream::from(TcpStream::connect(addr).await.unwrap()))
}

async fn whole_body(stream: &mut Stream, response: &mut Response) -> Result<Vec<u8>, H1Error> {
    let mut body = Vec::new();
    while let Some(piece) = response.body.next(stream, &mut Timer::default(), Duration::from_secs(5)).await? {
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

#[tokio::test]
async fn a_body_that_ends_with_the_connection_is_read_to_its_end() {
    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\n\r\nfirst ", b"second"], false).await;
    let mut r = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_secs(5)).await.unwrap();
    assert_eq!(whole_body(&mut stream, &mut r).await.unwrap(), b"first second");
    assert!(!r.body.reusable());
}

#[tokio::test]
async fn a_connection_that_ends_too_soon_is_an_error() {
    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], false).await;
    let mut r = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_secs(5)).await.unwrap();
    assert_eq!(whole_body(&mut stream, &mut r).await.unwrap_err(), H1Error::Closed);

    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"], false).await;
    let mut r = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_secs(5)).await.unwrap();
    assert_eq!(whole_body(&mut stream, &mut r).await.unwrap_err(), H1Error::Closed);

    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\nContent-"], false).await;
    assert_eq!(
        Response::read(&mut stream, &mut Timer::default(), false, Duration::from_secs(5)).await.unwrap_err(),
        H1Error::Closed
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out() {
    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\n"], true).await;
    let waited = std::time::Instant::now();
    let read = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_millis(200)).await;
    assert_eq!(read.unwrap_err(), H1Error::TimedOut);
    assert!(waited.elapsed() < Duration::from_secs(5));

    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok"], true).await;
    let mut r = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_millis(200)).await.unwrap();
    assert_eq!(
        r.body.next(&mut stream, &mut Timer::default(), Duration::from_millis(200)).await.unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    assert_eq!(
        r.body.next(&mut stream, &mut Timer::default(), Duration::from_millis(200)).await.unwrap_err(),
        H1Error::TimedOut
    );
}

#[tokio::test]
async fn a_head_larger_than_the_limit_is_refused() {
    let big: &'static [u8] = Box::leak(vec![b'a'; MAX_HEAD + 10].into_boxed_slice());
    let mut stream = serving(vec![b"HTTP/1.1 200 OK\r\nX-Big: ", big], true).await;
    let read = Response::read(&mut stream, &mut Timer::default(), false, Duration::from_secs(5)).await;
    assert_eq!(read.unwrap_err(), H1Error::Malformed("the head is too large"));
}

/// I/O that is ready after `after` (a read whose bytes arrive then), or never.
async fn io_after(after: Option<Duration>) -> std::io::Result<()> {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_connections_timer_times_each_wait_from_its_own_start() {
    use tokio::time::Instant;
    let mut timer = Timer::default();
    let ms = Duration::from_millis;
    assert_eq!(timer.within(ms(100), io_after(Some(ms(50)))).await, Ok(()));
    // The first deadline passes while the connection is idle: the next wait still gets its own.
    tokio::time::sleep(ms(200)).await;
    let started = Instant::now();
    assert_eq!(timer.within(ms(100), io_after(None)).await, Err(H1Error::TimedOut));
    assert_eq!(started.elapsed(), ms(100));
    // Moved later while still set, it fires at the later time, not the earlier one.
    assert_eq!(timer.within(ms(100), io_after(Some(ms(30)))).await, Ok(()));
    let started = Instant::now();
    assert_eq!(timer.within(ms(1000), io_after(None)).await, Err(H1Error::TimedOut));
    assert_eq!(started.elapsed(), ms(1000));
}

/// What the fuzz target `h1` runs, on inputs made of HTTP's own bytes, in the normal suite:
/// no input panics either reader.
mod any_input {
    use proptest::prelude::*;

    /// Bytes HTTP framing is made of, so that random inputs reach the chunk and field parsers.
    fn framing_bytes() -> impl Strategy<Value = Vec<u8>> {
        let alphabet = b"0123456789abcdefABCDEF;=\"\\ \t\r\n:xX-+,chunkedtrailer\x00\x7f\xe9".to_vec();
        proptest::collection::vec(proptest::sample::select(alphabet), 0..256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_chunked_request_or_answer_of_any_bytes_is_read_without_a_panic(tail in framing_bytes()) {
            for head in [
                &b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\n",
                b"",
            ] {
                crate::http1::fuzz_read(&[head, &tail[..]].concat());
            }
        }
    }
}
