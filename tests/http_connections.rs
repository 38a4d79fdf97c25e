//! `shoal serve`'s own defences (issue 28 F8), over real TCP on loopback: a
//! request head or body that stops arriving, an idle kept-alive
//! connection, more connections than the server serves at once, and a
//! request in flight at SIGTERM. Timeouts are set small (300 ms) and every
//! wait is bounded generously ([`PATIENCE`]), so a loaded machine makes
//! these slower, not flaky.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a test waits for anything the server should do within a
/// fraction of a second.
const PATIENCE: Duration = Duration::from_secs(5);

struct Server {
    child: Child,
    addr: String,
    _shoal: common::Shoal,
}

impl Server {
    /// `shoal serve` on an index of 3 dimensions, with `flags`.
    fn start(flags: &[&str]) -> Server {
        let shoal = common::Shoal::local();
        shoal.ok(&["init", "--dimensions", "3", "--partitions", "2"]);
        let mut child = shoal
            .cmd(&["serve", "--listen", "127.0.0.1:0", "--compact-every", "0"])
            .args(flags)
            .env_remove("SHOAL_API_KEY")
            .env_remove("SHOAL_API_KEY_READ")
            .env_remove("SHOAL_API_KEY_WRITE")
            .env_remove("SHOAL_S3V_CREDENTIALS")
            .env_remove("SHOAL_S3V_CREDENTIALS_FILE")
            .spawn()
            .unwrap();
        let addr = common::listening_addr(&mut child);
        Server {
            child,
            addr,
            _shoal: shoal,
        }
    }

    /// A connection whose reads give up after [`PATIENCE`].
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    fn sigterm(&self) {
        // SAFETY: kill() sends a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the server closes the connection (true) or a read waits
/// [`PATIENCE`] in vain (false); returns that and what arrived.
fn read_until_closed(s: &mut TcpStream) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (closed, String::from_utf8_lossy(&got).into_owned())
}

/// Sends one request on a kept-alive connection and reads its answer
/// (head and `Content-Length` body); returns the status line and body.
fn exchange(s: &mut TcpStream, request: &str) -> (String, String) {
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                let status = head.lines().next().unwrap_or("").to_string();
                return (status, body.to_string());
            }
        }
        let n = s.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before answering: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn a_request_head_that_stops_arriving_is_closed_after_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "300ms"]);
    let mut s = server.connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: te").unwrap();
    // A byte every 100 ms never finishes the head, and never extends it.
    let started = Instant::now();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"s").is_err() {
            break;
        }
    }
    let (closed, answer) = read_until_closed(&mut s);
    assert!(
        closed,
        "the connection is still open {:?} after half a head (header timeout 300 ms); got {answer:?}",
        started.elapsed()
    );
    // A whole head on a new connection is still answered.
    let (status, _) = exchange(&mut server.connect(), HEALTHZ);
    assert!(status.contains(" 200 "), "{status}");
}

#[test]
fn a_request_body_that_stops_arriving_is_answered_408_after_the_body_timeout() {
    let server = Server::start(&["--body-timeout", "300ms"]);
    let mut s = server.connect();
    s.write_all(
        b"POST /v1/upsert HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\n\r\n{\"records\": [",
    )
    .unwrap();
    let started = Instant::now();
    let (closed, answer) = read_until_closed(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "no 408 {:?} after a body stalled (body timeout 300 ms): {answer:?}",
        started.elapsed()
    );
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(closed, "the connection stays open after the 408: {answer}");
}

/// The S3 Vectors front end reads its bodies with the same timeout, and
/// answers in AWS's shape.
#[test]
fn an_s3vectors_body_that_stops_arriving_is_answered_408_after_the_body_timeout() {
    let server = Server::start(&[
        "--body-timeout",
        "300ms",
        "--s3vectors",
        "--insecure-no-auth",
    ]);
    let mut s = server.connect();
    s.write_all(
        b"POST /PutVectors HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\n\r\n{\"vectors\": [",
    )
    .unwrap();
    let (closed, answer) = read_until_closed(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "no 408 for a stalled S3 Vectors body (body timeout 300 ms): {answer:?}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: requesttimeoutexception"),
        "{answer}"
    );
    assert!(closed, "{answer}");
}

#[test]
fn a_kept_alive_connection_lasts_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "300ms", "--idle-timeout", "3s"]);
    let mut s = server.connect();
    let (status, _) = exchange(&mut s, HEALTHZ);
    assert!(status.contains(" 200 "), "{status}");
    // Idle for longer than a head may take, well within the idle timeout.
    std::thread::sleep(Duration::from_secs(1));
    let (status, _) = exchange(&mut s, HEALTHZ);
    assert!(status.contains(" 200 "), "{status}");
    let started = Instant::now();
    let (closed, rest) = read_until_closed(&mut s);
    assert!(
        closed,
        "an idle connection is still open {:?} after its last answer (idle timeout 3 s): {rest:?}",
        started.elapsed()
    );
    assert!(rest.is_empty(), "{rest}");
}

#[test]
fn connections_beyond_the_limit_are_answered_503_and_healthz_answers_once_they_free() {
    let server = Server::start(&["--max-connections", "3"]);
    // Three kept-alive connections, each answered once: the server holds
    // all three.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = server.connect();
            let (status, _) = exchange(&mut s, HEALTHZ);
            assert!(status.contains(" 200 "), "{status}");
            s
        })
        .collect();
    for _ in 0..10 {
        let mut s = server.connect();
        // The request may be refused before it is sent.
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let (closed, answer) = read_until_closed(&mut s);
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "a fourth connection got {answer:?} (closed: {closed}), not a 503"
        );
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        assert!(closed, "{answer}");
    }
    // The connections the server holds still work.
    let (status, _) = exchange(&mut held[0], HEALTHZ);
    assert!(status.contains(" 200 "), "{status}");
    // One goes: a new connection is served again.
    drop(held.remove(0));
    let started = Instant::now();
    let answer = loop {
        let mut s = server.connect();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let (_, answer) = read_until_closed(&mut s);
        if answer.starts_with("HTTP/1.1 200") || started.elapsed() > PATIENCE {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz not answered {:?} after a connection closed: {answer:?}",
        started.elapsed()
    );
}

#[test]
fn a_request_in_flight_at_sigterm_is_answered_before_the_server_exits() {
    let mut server = Server::start(&[]);
    // An idle kept-alive connection, which must not delay the exit.
    let mut idle = server.connect();
    let (status, _) = exchange(&mut idle, HEALTHZ);
    assert!(status.contains(" 200 "), "{status}");
    let body = br#"{"records": [{"id": "a", "vector": [1, 0, 0]}]}"#;
    let mut s = server.connect();
    // With `Expect: 100-continue` the server says when it starts reading
    // the body: the request is then in flight for sure.
    let head = format!(
        "POST /v1/upsert HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    server.sigterm();
    // Shutting down: new connections are refused.
    let started = Instant::now();
    while TcpStream::connect(&server.addr).is_ok() {
        assert!(
            started.elapsed() < PATIENCE,
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.write_all(body).unwrap();
    let (_, answer) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (closed, rest) = read_until_closed(&mut idle);
    assert!(closed && rest.is_empty(), "{closed} {rest:?}");
    let started = Instant::now();
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < PATIENCE, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited.success(), "{exited}");
}
