//! The accept loop of `shoal serve`: how many connections it holds and for
//! how long (issue 28 F8). Requests themselves are the router's business;
//! this file decides which connections reach it and when they go.
//!
//! - At most `max_connections` connections are served at once. One more is
//!   answered `503` with `Retry-After: 1` and closed, without being read,
//!   so a flood of connections holds at most `max_connections` descriptors
//!   plus [`REFUSALS_AT_ONCE`] being refused, and a new connection is
//!   served again as soon as some close.
//! - Each served connection has a watchdog that closes it when its client
//!   has been silent too long for what it is doing: reading a request head
//!   (`header_timeout`, counted from the accept, or from the head's first
//!   byte on a kept-alive connection), or waiting between requests
//!   (`idle_timeout`, counted from the last byte either way, which also
//!   ends a response stuck behind a client that stopped reading). While
//!   a request is being answered the router's own limits apply: the body
//!   timeout (408) and the query timeout (503).
//! - Shutdown stops accepting, lets each connection finish the request it
//!   is serving (a kept-alive idle one closes at once) and returns when
//!   every connection is gone.
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper
//! begins waiting for a head, which on a kept-alive connection is right
//! after the previous answer, so it would also be the idle timeout. A
//! keep-alive as short as a head timeout races a load balancer that keeps
//! its own idle connections for 60 s (an ALB's default): a request sent
//! as shoal closes is lost (a 502 at the balancer).
//!
//! HTTP/1.1 only (`axum::serve` also took HTTP/2 with prior knowledge):
//! every client shoal has (curl, the SDKs, boto3, load balancers) speaks
//! it, and the timeouts above are written for it.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// How long a client may take to send a request head by default. A head
/// is a packet or two: 10 s covers a slow link and three retransmissions
/// of a lost packet (1 s + 2 s + 4 s), while a client that never finishes
/// one holds its connection slot no longer than that.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive by default: the default
/// body limit (16 MiB) at about 5 Mbit/s. Slower clients send smaller
/// batches or get a longer `--body-timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a kept-alive connection may sit idle by default. Longer than
/// the 60 s an AWS load balancer keeps idle connections to its targets
/// (AWS advises the target to wait longer, so the balancer, not shoal,
/// closes them); nginx's default `keepalive_timeout` is 75 s too.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Connections served at once by default. An idle connection costs a
/// descriptor, a task and hyper's 8 KiB read buffer: 1,024 of them are
/// about 10 MiB. More would not answer faster (searches run 4 per core
/// at once); a load balancer in front reuses a few connections. It is
/// also systemd's default soft limit on open files, which `shoal serve`
/// raises to fit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Connections being refused at once. Each is answered and then read
/// until its client closes, for at most [`REFUSAL_LINGER`]: closing
/// with its request unread would reset the connection, and the client
/// could lose the 503 before reading it. Beyond this, new connections
/// past the limit are closed at once.
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refused connection is kept to let its client read the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The body of the 503 a connection beyond the limit gets.
const REFUSAL: &str =
    r#"{"error":{"code":"unavailable","message":"too many connections; retry in a second"}}"#;

/// The limits on connections (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts connections and serves `router` on each until `shutdown`
/// resolves, then waits for the connections to finish (module doc).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    // Connections watch `stop` for the shutdown, and hold `open` until
    // they end: `open_tx.closed()` resolves when the last one is gone.
    let (stop_tx, stop) = watch::channel(false);
    let (open_tx, open) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut over = OverLimit::default();
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            over.one_more(limits.max_connections);
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                let open = open.clone();
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop((refusing, open));
                });
            }
            // Else dropped: closed at once, unanswered.
            continue;
        };
        let (router, stop, open) = (router.clone(), stop.clone(), open.clone());
        tokio::spawn(async move {
            serve_one(stream, router, limits, stop).await;
            drop((slot, open));
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open);
    open_tx.closed().await;
    Ok(())
}

/// Connections turned away at the limit, logged at most once a minute.
#[derive(Default)]
struct OverLimit {
    since_logged: u64,
    logged: Option<Instant>,
}

impl OverLimit {
    fn one_more(&mut self, max_connections: usize) {
        self.since_logged += 1;
        if self
            .logged
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(
            refused = self.since_logged,
            "{max_connections} connections are open (--max-connections); new ones are \
             answered 503 until some close"
        );
        self.since_logged = 0;
        self.logged = Some(Instant::now());
    }
}

/// After a failed accept: a connection that went away before it was
/// accepted is nothing; anything else (out of descriptors) is logged and
/// waited out for a second, so the loop does not spin.
async fn pause_after_accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers a connection beyond the limit 503 (with `Retry-After: 1`,
/// unread) and closes it.
async fn refuse(mut stream: TcpStream) {
    let answered = async {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL}",
            REFUSAL.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answered).await;
}

/// Serves one connection until it ends, its watchdog closes it, or (after
/// `stop` turns true) its request in progress is answered.
async fn serve_one(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let router = TowerToHyperService::new(router);
    let on = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let serving = on.serving();
        let answer = router.call(req);
        async move {
            let answer = answer.await;
            drop(serving);
            answer
        }
    });
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let mut conn = pin!(hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service));
    let mut stopping = false;
    loop {
        // While a request is served there is no deadline: look again in
        // `idle_timeout` (any deadline after the answer is later).
        let deadline = activity
            .deadline(&limits)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes the socket.
                    tracing::debug!("closed a connection whose client was silent too long");
                    return;
                }
            }
        }
    }
}

/// What a connection's watchdog knows about it.
struct Activity(Mutex<Phase>);

struct Phase {
    /// Requests handed to the router whose answer is not ready yet.
    serving: usize,
    /// When the request head being read started: its first byte, or the
    /// accept for a new connection. `None` between requests.
    head_since: Option<Instant>,
    /// When bytes last moved, either way.
    last_io: Instant,
}

impl Activity {
    fn new(accepted: Instant) -> Activity {
        Activity(Mutex::new(Phase {
            serving: 0,
            head_since: Some(accepted),
            last_io: accepted,
        }))
    }

    /// When the connection is to be closed, if nothing happens before;
    /// `None` while a request is being answered.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let p = self.0.lock().unwrap();
        if p.serving > 0 {
            return None;
        }
        Some(match p.head_since {
            Some(since) => since + limits.header_timeout,
            None => p.last_io + limits.idle_timeout,
        })
    }

    fn read(&self) {
        let now = Instant::now();
        let mut p = self.0.lock().unwrap();
        p.last_io = now;
        if p.serving == 0 && p.head_since.is_none() {
            p.head_since = Some(now);
        }
    }

    fn wrote(&self) {
        self.0.lock().unwrap().last_io = Instant::now();
    }

    /// A request head was read and goes to the router; it counts as being
    /// served until the guard is dropped.
    fn serving(self: &Arc<Self>) -> Serving {
        let mut p = self.0.lock().unwrap();
        p.serving += 1;
        p.head_since = None;
        Serving(self.clone())
    }
}

/// A request being answered (see [`Activity::serving`]).
struct Serving(Arc<Activity>);

impl Drop for Serving {
    fn drop(&mut self) {
        let mut p = self.0 .0.lock().unwrap();
        p.serving -= 1;
        p.last_io = Instant::now();
    }
}

/// A connection's socket that tells its [`Activity`] when bytes move.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
