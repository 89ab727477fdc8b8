use super::*;
use pingora::http::RequestHeader;
use pingora::http::ResponseHeader;
use std::sync::atomic::AtomicU32;
use std::sync::{mpsc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"errcode\":0}";

fn url(listener: &TcpListener) -> Url {
    Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap()
}

/// Reads one request (head and Content-Length body) off `sock`; `None` at end of stream.
async fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn call(up: &Upstream, method: &str, body: &'static [u8]) -> Result<Bytes, CallFailure> {
    let client = RequestHeader::build(method, b"/ignored", None).unwrap();
    let outbound = Outbound::for_test("/x", "a=1");
    let mut answer = up.send(&client, &outbound, "T", &mut Body::Whole(Bytes::from_static(body))).await?;
    let whole = super::super::exchange::read_whole(&mut answer).await?;
    drop(answer);
    Ok(whole)
}

#[test]
fn aims_at_the_base_path_and_host_and_drops_this_hops_headers() {
    let up = Upstream::new(
        &Url::parse("http://127.0.0.1:9801/wx/").unwrap(),
        &[Url::parse("http://localhost/").unwrap()],
        Duration::from_secs(3),
    )
    .unwrap();
    let mut client = RequestHeader::build("POST", b"/ignored", None).unwrap();
    for (k, v) in [
        ("authorization", "Bearer key"),
        ("x-wxgate-key", "key"),
        ("connection", "keep-alive, HTTP2-Settings"),
        ("http2-settings", "AAAA"),
        ("transfer-encoding", "chunked"),
        ("content-type", "application/json"),
        ("host", "gw"),
    ] {
        client.append_header(k, v).unwrap();
    }
    let body = Body::Whole(Bytes::from_static(b"{}"));
    let head = up.request(&client, 0, &Outbound::for_test("/cgi-bin/user/info", ""), "t", &body).unwrap();
    let mut parsed = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut parsed);
    assert_eq!(req.parse(&head).unwrap(), httparse::Status::Complete(head.len()), "one head, nothing after it");
    assert_eq!(
        (req.method, req.path, req.version),
        (Some("POST"), Some("/wx/cgi-bin/user/info?access_token=t"), Some(1))
    );
    let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    assert_eq!(
        headers,
        [("host", &b"127.0.0.1:9801"[..]), ("content-type", b"application/json"), ("content-length", b"2")]
    );
    let head = up.request(&client, 1, &Outbound::for_test("/x", ""), "t", &body).unwrap();
    assert!(head.starts_with(b"POST /x?access_token=t HTTP/1.1\r\nhost: localhost\r\n"));
    let split = Outbound::for_test("/x HTTP/1.1\r\nx:", "y");
    assert!(up.request(&client, 1, &split, "t", &body).is_none(), "a URI cannot split the request line");

    let mut answer = ResponseHeader::build(200, None).unwrap();
    for (k, v) in [("connection", "close, x-hop"), ("x-hop", "1"), ("keep-alive", "timeout=5"), ("content-length", "9")]
    {
        answer.append_header(k, v).unwrap();
    }
    answer.append_header("transfer-encoding", "chunked").unwrap();
    let streamed = downstream_header(Box::new(answer.clone()), None);
    let names: Vec<&str> = streamed.headers.keys().map(|k| k.as_str()).collect();
    // Read by its chunks, it goes out framed by the edge (chunked again): the length it also
    // claimed is not passed on.
    assert!(names.is_empty(), "a streamed answer is framed by the edge: {names:?}");
    let whole = downstream_header(Box::new(answer), Some(2));
    let names: Vec<&str> = whole.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-length"]);
    assert_eq!(whole.headers["content-length"], "2");
    assert!(Upstream::new(&Url::parse("https://no-such-host.invalid/").unwrap(), &[], Duration::from_secs(1)).is_err());
    assert!(
        Upstream::new(
            &Url::parse("http://127.0.0.1:1/").unwrap(),
            &[Url::parse("https://no-such-host.invalid/").unwrap()],
            Duration::from_secs(1)
        )
        .is_ok(),
        "a fallback is resolved when needed"
    );
}

/// A server that answers one call per connection with keep-alive, then closes it: every
/// pooled connection is dead by the next call, which must still succeed, on a new one.
#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new(&url(&listener), &[], Duration::from_secs(3)).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let request = read_request(&mut sock).await.unwrap();
            assert!(request.starts_with("GET /x?a=1&access_token=T "), "{request}");
            let _ = sock.write_all(OK).await;
        }
    });
    for wait in [0, 50, 0] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        assert_eq!(&call(&up, "GET", b"").await.unwrap()[..], br#"{"errcode":0}"#);
    }
}

/// The server answers the first call on each connection and reads the second whole, then
/// closes without answering: the call was written whole on a pooled connection that broke.
/// WeChat may have acted on it, so only a call that is safe to repeat is sent again.
#[tokio::test]
async fn a_call_written_whole_on_a_broken_pooled_connection_is_sent_again_only_if_safe() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url(&listener);
    let up = Upstream::new(&base, &[], Duration::from_secs(3)).unwrap();
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut on_this = 0;
                while let Some(request) = read_request(&mut sock).await {
                    seen.lock().unwrap().push(request.lines().next().unwrap_or_default().to_owned());
                    on_this += 1;
                    if on_this == 2 {
                        return;
                    }
                    sock.write_all(OK).await.unwrap();
                }
            });
        }
    });
    let lines = || std::mem::take(&mut *received.lock().unwrap());
    call(&up, "GET", b"").await.unwrap();
    assert_eq!(call(&up, "GET", b"").await.unwrap().len(), 13, "the GET is sent again on a new connection");
    assert_eq!(lines().len(), 3, "once, then twice for the call that broke");

    let up = Upstream::new(&base, &[], Duration::from_secs(3)).unwrap();
    call(&up, "POST", b"{\"touser\":\"o\"}").await.unwrap();
    assert_eq!(call(&up, "POST", b"{\"touser\":\"o\"}").await, Err(CallFailure::Broken), "a message is not sent twice");
    let posts = lines();
    assert_eq!(posts.len(), 2, "each POST reached the server once: {posts:?}");
    assert!(posts.iter().all(|l| l.starts_with("POST /x?a=1&access_token=T ")), "{posts:?}");
}

/// The primary refuses connections: calls go to the fallback, which becomes the active
/// host (counted); once the primary answers again it gets the calls back, after the wait.
#[tokio::test]
async fn a_fallback_takes_over_and_the_primary_is_tried_again_after_a_while() {
    let primary_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary = url(&primary_listener);
    drop(primary_listener);
    let fallback = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new(&primary, &[url(&fallback)], Duration::from_secs(3))
        .unwrap()
        .retrying_primary_after(Duration::from_millis(300));
    let served = |listener: TcpListener, count: Arc<AtomicU32>| {
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    while read_request(&mut sock).await.is_some() {
                        count.fetch_add(1, Ordering::SeqCst);
                        if sock.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    let on_fallback = Arc::new(AtomicU32::new(0));
    served(fallback, Arc::clone(&on_fallback));
    metrics::init();
    let switches = |to: &str| metrics::UPSTREAM_SWITCHES.with_label_values(&[to]).get();
    let (to_fallback, to_primary) = (switches("fallback"), switches("primary"));

    call(&up, "GET", b"").await.unwrap();
    assert_eq!(up.first_target(), 1, "the fallback is the active host");
    call(&up, "GET", b"").await.unwrap();
    assert_eq!(on_fallback.load(Ordering::SeqCst), 2);
    assert_eq!(switches("fallback"), to_fallback + 1, "counted once");

    // The primary comes back on its address.
    let on_primary = Arc::new(AtomicU32::new(0));
    served(TcpListener::bind(primary.socket_addrs(|| None).unwrap()[0]).await.unwrap(), Arc::clone(&on_primary));
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_primary.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the primary was not tried again");
        call(&up, "GET", b"").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.first_target(), 0, "calls went back to the primary");
    assert_eq!(switches("primary"), to_primary + 1);
}

/// A chunked answer is read whole through the gateway's own client, and its connection,
/// read to the last chunk, carries the next call: one connection for both.
#[tokio::test]
async fn a_chunked_answer_is_read_whole_and_its_connection_kept() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::new(&url(&listener), &[], Duration::from_secs(3)).unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while read_request(&mut sock).await.is_some() {
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"errc\r\n7\r\node\":0}\r\n0\r\n\r\n";
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    for _ in 0..2 {
        assert_eq!(&call(&up, "GET", b"").await.unwrap()[..], br#"{"errcode":0}"#);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the second call went on the first call's connection");
}

/// A WeChat stand-in on a runtime of its own, for callers on other threads: answers every call
/// on a connection with that connection's number, counted from 1 in the order accepted. Stops
/// when dropped.
struct NumberingServer {
    url: Url,
    _runtime: tokio::runtime::Runtime,
}

impl NumberingServer {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = url(&listener);
        runtime.spawn(async move {
            for number in 1u32.. {
                let (mut sock, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let body = format!("{number}");
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    while read_request(&mut sock).await.is_some() {
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, _runtime: runtime }
    }
}

enum Step {
    Call,
    /// Drop the thread's runtime, and go on with a new one.
    NewRuntime,
}

/// A thread with a single-threaded runtime of its own, as each pingora worker has, that calls
/// through a shared `Upstream` when told to and says which connection answered. Told by a
/// channel, answered within a bound, so that a stuck or panicked worker fails the test.
struct Worker {
    tell: mpsc::Sender<Step>,
    heard: mpsc::Receiver<Result<u32, CallFailure>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn start(up: &Arc<Upstream>) -> Self {
        let (tell, told) = mpsc::channel();
        let (answer, heard) = mpsc::channel();
        let up = Arc::clone(up);
        let thread = std::thread::spawn(move || {
            let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut rt = runtime();
            for step in told {
                match step {
                    Step::Call => {
                        let number = rt
                            .block_on(call(&up, "GET", b""))
                            .map(|b| std::str::from_utf8(&b).unwrap().parse().unwrap());
                        answer.send(number).unwrap();
                    }
                    Step::NewRuntime => {
                        drop(std::mem::replace(&mut rt, runtime()));
                        answer.send(Ok(0)).unwrap();
                    }
                }
            }
        });
        Self { tell, heard, thread }
    }

    fn ask(&self, step: Step) -> Result<u32, CallFailure> {
        self.tell.send(step).expect("the worker is gone");
        self.heard.recv_timeout(Duration::from_secs(10)).expect("the worker did not answer")
    }

    /// The connection that answered a call made on this worker.
    fn call(&self) -> u32 {
        self.ask(Step::Call).unwrap()
    }

    /// Ends the thread, which must not have panicked.
    fn stop(self) {
        drop(self.tell);
        self.thread.join().expect("the worker panicked");
    }
}

/// Two workers share one `Upstream`: a connection one gave back is not taken by the other,
/// which opens its own, and each takes its own again on its next call.
#[test]
fn a_pooled_connection_is_taken_again_only_by_the_thread_that_opened_it() {
    let server = NumberingServer::start();
    let up = Arc::new(Upstream::new(&server.url, &[], Duration::from_secs(3)).unwrap());
    let (a, b) = (Worker::start(&up), Worker::start(&up));
    assert_eq!(a.call(), 1);
    assert_eq!(b.call(), 2, "B opened its own, while A's was idle");
    assert_eq!(a.call(), 1, "A took its own again");
    assert_eq!(b.call(), 2, "B took its own again");
    a.stop();
    b.stop();
}

/// A worker's runtime is shut down while its connection is idle in the shared pool: the other
/// worker's calls go on, on its own connection, and the first, on a new runtime, opens a new one
/// (the old one's reactor is gone). Nothing panics.
#[test]
fn a_connection_whose_runtime_shut_down_is_never_driven_again() {
    let server = NumberingServer::start();
    let up = Arc::new(Upstream::new(&server.url, &[], Duration::from_secs(3)).unwrap());
    let (a, b) = (Worker::start(&up), Worker::start(&up));
    assert_eq!(a.call(), 1);
    a.ask(Step::NewRuntime).unwrap();
    assert_eq!(b.call(), 2);
    assert_eq!(b.call(), 2);
    assert_eq!(a.call(), 3, "A's connection went with its runtime");
    assert_eq!(a.call(), 3);
    a.stop();
    b.stop();
}
