//! The HTTP server loop: hyper per connection, with what `axum::serve` does
//! not offer and a server facing the internet needs.
//!
//! - **A cap on open connections** (`server.max_connections`): past it a
//!   new connection is answered `503` (a problem document) and closed at
//!   once, so the process never runs out of file descriptors and never
//!   leaves a client hanging.
//! - **A header read timeout**: from a request's first byte, its headers
//!   must arrive within `server.header_read_timeout_ms`, or the connection
//!   is closed (a client trickling one byte a second holds nothing).
//! - **An idle timeout**: a connection with no request in progress and
//!   nothing sent or received for `server.idle_timeout_ms` is closed.
//! - **A bounded shutdown**: on shutdown the listener closes, requests in
//!   progress may finish until the deadline, and whatever is left is cut.
//! - **Its own threads, below delivery** (`ApiRuntime`): see there.
//! - **Problem documents for hyper's own refusals**: hyper answers a request
//!   it cannot parse (a broken request line, too many or too large headers,
//!   a URI too long) by itself, with an empty body; `Watched` replaces that
//!   answer with an `application/problem+json` one.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::telemetry as m;

/// The API's own tokio runtime (`server.threads`, `server.nice`).
///
/// On one runtime with the engine, a few hundred busy connections are a few
/// hundred tasks beside the engine's, and the scheduler shares the threads
/// among tasks: measured with wrk (256 connections, one notification per
/// request), intake took 10,000-14,000/s while delivery got 3,300-3,700/s,
/// and the backlog grew by the difference. On threads of its own that the
/// kernel schedules `nice` steps lower, the API gets what delivery leaves:
/// the same run accepted 7,400-8,600/s and delivered 87-99% of it while the
/// load lasted (docs/benchmarks.md). How many threads it has is
/// `Config::threads`' split of the cores; when both want a core, the
/// priority decides in delivery's favour.
///
/// Nice values are per thread on Linux (`setpriority` on the thread id);
/// elsewhere the threads are separate but not lower.
pub struct ApiRuntime(Option<tokio::runtime::Runtime>);

impl ApiRuntime {
    /// `threads` workers (at least one), `nice` steps below the caller's.
    pub fn start(threads: usize, nice: u8) -> std::io::Result<ApiRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("herald-api")
            .on_thread_start(move || lower_this_thread(nice))
            .enable_all()
            .build()?;
        Ok(ApiRuntime(Some(rt)))
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for ApiRuntime {
    /// Without waiting: a runtime may not block inside another's task, and
    /// by the time the runtime is dropped its server has ended.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority by `nice` steps.
#[cfg(target_os = "linux")]
fn lower_this_thread(nice: u8) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    let wanted = (now + i32::from(nice)).min(19);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), wanted) {
        tracing::warn!(error = %e, "cannot lower the API threads' priority; they run at delivery's");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread(_nice: u8) {}

/// The connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`; then lets requests in
/// progress finish until `deadline`, cuts what is left and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors or memory: wait a moment
                        // rather than spin on the error.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                    conns.spawn(refuse(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let watcher = graceful.watcher();
                let app = app.clone();
                conns.spawn(async move {
                    connection(stream, app, limits, watcher).await;
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    let open = conns.len();
    if open > 0 {
        tracing::info!(open, "letting requests in progress finish");
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            left = conns.len(),
            "connections still open at the end of the grace period are cut"
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// The answer to a connection past `max_connections`: 503, closed.
async fn refuse(mut stream: TcpStream) {
    let body = problem_json(
        503,
        "too-many-connections",
        "Service unavailable",
        "this server has as many connections open as it allows; retry shortly",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// One connection: hyper (HTTP/1.1 or HTTP/2) over the watched stream,
/// closed when its header or idle time runs out, or when it is done.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let activity = Arc::new(Activity::default());
    activity.wrote(); // the connection's start counts as activity
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, act) = (app.clone(), act.clone());
        act.begin();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await;
            act.end();
            resp
        }
    });
    // No hyper timer: the header and idle timeouts are ours (below), which
    // tell a slow request from an idle connection.
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    // A request may start arriving at any moment while the watchdog
    // sleeps: it wakes at least every half header timeout, so a slow
    // header is cut within one and a half of it.
    let tick = (limits.header_read_timeout / 2).max(Duration::from_millis(10));
    loop {
        let wait = activity
            .time_left(limits, now_ms())
            .unwrap_or(tick)
            .min(tick);
        tokio::select! {
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(wait) => {
                let reason = match activity.expired(limits, now_ms()) {
                    Some(Expired::Headers) => "headers",
                    Some(Expired::Idle) => "idle",
                    None => continue,
                };
                metrics::counter!(m::CONNECTIONS_TIMED_OUT, "reason" => reason).increment(1);
                tracing::debug!(reason, "closing a connection that ran out of time");
                return;
            }
        }
    }
}

/// Milliseconds since the first call: a cheap clock for activity stamps.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What a connection is doing, as its I/O and its requests report it.
#[derive(Default)]
struct Activity {
    /// Last time a byte came in or went out.
    last_io_ms: AtomicU64,
    /// When the bytes of a request not yet dispatched began to arrive
    /// (0: none are arriving).
    head_started_ms: AtomicU64,
    /// Requests dispatched to the app and not yet answered.
    in_flight: AtomicUsize,
    /// Requests dispatched whose response head has not been written: a
    /// response head written with none pending is hyper's own refusal.
    awaiting_head: AtomicUsize,
}

#[derive(Debug, PartialEq, Eq)]
enum Expired {
    Headers,
    Idle,
}

impl Activity {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.awaiting_head.fetch_add(1, Ordering::SeqCst);
        self.head_started_ms.store(0, Ordering::SeqCst);
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.last_io_ms.store(now_ms(), Ordering::SeqCst);
    }

    fn read(&self) {
        let now = now_ms();
        self.last_io_ms.store(now, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ =
                self.head_started_ms
                    .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn wrote(&self) {
        self.last_io_ms.store(now_ms(), Ordering::SeqCst);
    }

    /// Whether the connection has run out of time at `now` (`now_ms()`).
    fn expired(&self, limits: ConnectionLimits, now: u64) -> Option<Expired> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None; // the request timeout bounds a request in progress
        }
        let head = self.head_started_ms.load(Ordering::SeqCst);
        if head != 0 && now.saturating_sub(head) >= limits.header_read_timeout.as_millis() as u64 {
            return Some(Expired::Headers);
        }
        let last = self.last_io_ms.load(Ordering::SeqCst);
        (head == 0 && now.saturating_sub(last) >= limits.idle_timeout.as_millis() as u64)
            .then_some(Expired::Idle)
    }

    /// How long from `now` until the connection could run out of time.
    fn time_left(&self, limits: ConnectionLimits, now: u64) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_started_ms.load(Ordering::SeqCst);
        let (since, limit) = if head != 0 {
            (head, limits.header_read_timeout)
        } else {
            (
                self.last_io_ms.load(Ordering::SeqCst).max(1),
                limits.idle_timeout,
            )
        };
        let due = since + limit.as_millis() as u64;
        Some(Duration::from_millis(due.saturating_sub(now).max(1)))
    }
}

/// A connection's stream, reporting its I/O to `Activity`, and turning
/// hyper's own empty-bodied refusals into problem documents.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// The response head now being written was counted as the answer to a
    /// dispatched request (a write that returned `Pending` is retried with
    /// the same head, which must not be counted twice).
    head_counted: bool,
    /// The problem answer written in place of hyper's, and how much of it
    /// is out.
    replacement: Vec<u8>,
    written: usize,
}

impl Watched {
    fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            head_counted: false,
            replacement: Vec::new(),
            written: 0,
        }
    }

    /// Writes what is left of the replacement; ready when all is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.replacement.len() {
            let n =
                match Pin::new(&mut self.inner).poll_write(cx, &self.replacement[self.written..]) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Before writing `first`: if it starts hyper's own refusal (a response
    /// head with no dispatched request waiting for it), takes it over and
    /// says so; a head answering a dispatched request is counted off.
    fn took_over(&mut self, first: &[u8]) -> bool {
        if !self.replacement.is_empty() {
            return true;
        }
        let Some(status) = response_status(first) else {
            return false;
        };
        if self.head_counted {
            return false;
        }
        let ours = self
            .activity
            .awaiting_head
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if ours {
            self.head_counted = true;
            return false;
        }
        self.replacement = replacement(status);
        true
    }

    /// Writes the replacement in place of `len` bytes hyper gave: they count
    /// as written, and nothing of hyper's goes out after it.
    fn poll_instead(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // What is not out yet goes on flush or shutdown.
            _ => Poll::Ready(Ok(len)),
        }
    }

    fn wrote(&mut self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.head_counted = false;
            self.activity.wrote();
        }
    }
}

/// The status of an HTTP/1 response head at the start of `buf`.
fn response_status(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// The problem document for a refusal hyper made by itself, as a whole
/// response that closes the connection.
fn replacement(status: u16) -> Vec<u8> {
    let (kind, title, detail, reason) = match status {
        431 => (
            "headers-too-large",
            "Request header fields too large",
            "the request has too many header fields or they are too large",
            "Request Header Fields Too Large",
        ),
        414 => (
            "uri-too-long",
            "URI too long",
            "the request's URI is longer than this server reads",
            "URI Too Long",
        ),
        _ => (
            "malformed-request",
            "Bad request",
            "the request is not well-formed HTTP",
            "Bad Request",
        ),
    };
    metrics::counter!(m::REJECTED, "type" => kind).increment(1);
    let body = problem_json(status, kind, title, detail);
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn problem_json(status: u16, kind: &str, title: &str, detail: &str) -> String {
    let problem = super::problem::Problem {
        kind: format!("urn:herald:problem:{kind}"),
        title: title.into(),
        status,
        detail: detail.into(),
        errors: Vec::new(),
        errors_total: None,
    };
    serde_json::to_string(&problem).unwrap_or_default()
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.took_over(buf) {
            return this.poll_instead(cx, buf.len());
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.took_over(first) {
            let total = bufs.iter().map(|b| b.len()).sum();
            return this.poll_instead(cx, total);
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_is_told_from_anything_else() {
        assert_eq!(response_status(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(response_status(b"HTTP/1.0 431 x"), Some(431));
        assert_eq!(response_status(b"{\"id\": 1}"), None);
        assert_eq!(response_status(b"HTTP/1.1 4"), None);
        assert_eq!(response_status(b""), None);
    }

    #[test]
    fn a_refusal_becomes_a_problem_that_closes_the_connection() {
        let r = String::from_utf8(replacement(431)).expect("utf-8");
        let (head, body) = r.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["type"], "urn:herald:problem:headers-too-large");
        assert_eq!(v["status"], 431);
    }

    #[test]
    fn headers_run_out_from_their_first_byte_and_idle_from_the_last() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(60_000),
        };
        let a = Activity::default();
        a.last_io_ms.store(100_000, Ordering::SeqCst);
        assert_eq!(a.expired(limits, 159_999), None);
        assert_eq!(a.time_left(limits, 150_000), Some(Duration::from_secs(10)));
        assert_eq!(a.expired(limits, 160_000), Some(Expired::Idle));
        // A request's first bytes came at 100 s and its headers are not in:
        // out at 110 s, however many bytes trickle in meanwhile.
        a.head_started_ms.store(100_000, Ordering::SeqCst);
        a.last_io_ms.store(109_000, Ordering::SeqCst);
        assert_eq!(a.expired(limits, 109_999), None);
        assert_eq!(a.time_left(limits, 105_000), Some(Duration::from_secs(5)));
        assert_eq!(a.expired(limits, 110_000), Some(Expired::Headers));
        // Dispatched: the request timeout, not these, bounds it now.
        a.begin();
        assert_eq!(a.expired(limits, 500_000), None);
        assert_eq!(a.time_left(limits, 500_000), None);
        a.end();
        assert_eq!(
            a.head_started_ms.load(Ordering::SeqCst),
            0,
            "the next request starts afresh"
        );
    }
}
