//! The HTTP server under hostile clients, over raw TCP: slow headers, idle
//! connections, more connections than it takes, requests hyper refuses by
//! itself, an oversized Content-Length, and SIGTERM with a request half
//! sent.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::utils::{spawn_serve, TestServer};

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `within` passes):
/// what it sent, and whether it closed.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// The status, content type and body of a raw HTTP/1.1 response.
fn parse(resp: &str) -> (u16, String, serde_json::Value) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (
        status,
        content_type,
        serde_json::from_str(body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let s = TestServer::start_with(|c| c.server.header_read_timeout_ms = 500).await;
    let mut conn = TcpStream::connect(addr(&s)).await.expect("connect");
    let head = b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut closed = false;
    for b in head {
        if conn.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !closed {
        closed = read_to_close(&mut conn, Duration::from_secs(3)).await.1;
    }
    assert!(
        closed,
        "a header a byte every 50 ms kept the connection open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let s = TestServer::start_with(|c| c.server.idle_timeout_ms = 500).await;
    // Never a byte.
    let mut silent = TcpStream::connect(addr(&s)).await.expect("connect");
    assert!(
        read_to_close(&mut silent, Duration::from_secs(5)).await.1,
        "silent connection left open"
    );
    // Kept alive after a request, then silent.
    let mut kept = TcpStream::connect(addr(&s)).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (resp, closed) = read_to_close(&mut kept, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(closed, "an idle keep-alive connection was left open");
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_gets_503_and_is_closed() {
    let s = TestServer::start_with(|c| c.server.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr(&s)).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr(&s))
        .await
        .expect("the kernel accepts");
    let (resp, closed) = read_to_close(&mut extra, Duration::from_secs(5)).await;
    let (status, ct, body) = parse(&resp);
    assert_eq!(status, 503, "{resp}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["type"], "urn:herald:problem:too-many-connections");
    assert!(closed);
    // A slot frees when a connection goes, and the server serves again.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = s.get("/v1/providers").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn what_hyper_refuses_by_itself_is_a_problem_document() {
    let s = TestServer::start().await;
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!("/v1/{}", "a".repeat(70_000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed-request"),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 400, "malformed-request"),
        (
            b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "malformed-request",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers-too-large",
        ),
        (
            format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "uri-too-long",
        ),
    ];
    for (req, want, kind) in cases {
        let mut conn = TcpStream::connect(addr(&s)).await.expect("connect");
        let _ = conn.write_all(&req).await;
        let (resp, _) = read_to_close(&mut conn, Duration::from_secs(5)).await;
        let (status, ct, body) = parse(&resp);
        assert_eq!(status, want, "{resp}");
        assert_eq!(ct, "application/problem+json", "{resp}");
        assert_eq!(body["type"], format!("urn:herald:problem:{kind}"), "{resp}");
        assert_eq!(body["status"], want);
    }
    // The same connection serves ordinary requests, problems included.
    let mut conn = TcpStream::connect(addr(&s)).await.expect("connect");
    conn.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (resp, _) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(
        resp.contains("HTTP/1.1 200"),
        "pipelined second answer: {resp}"
    );
}

#[tokio::test]
async fn an_oversized_content_length_is_refused_at_once() {
    let s = TestServer::start_with(|c| c.server.request_timeout_ms = 20_000).await;
    let mut conn = TcpStream::connect(addr(&s)).await.expect("connect");
    let req = format!(
        "POST /v1/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{{",
        s.key
    );
    conn.write_all(req.as_bytes()).await.expect("write");
    let started = Instant::now();
    let (resp, _) = read_to_close(&mut conn, Duration::from_secs(10)).await;
    let (status, ct, body) = parse(&resp);
    assert_eq!(status, 413, "{resp}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["type"], "urn:herald:problem:payload-too-large");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// `herald serve` with a request half sent when SIGTERM comes: it exits
/// within its grace period, and with its open-file limit raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_request_half_sent_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = if std::path::Path::new("/usr/bin/prlimit").exists() {
        // A low soft limit, which Herald raises to the hard one.
        let mut c = Command::new("prlimit");
        c.arg("--nofile=512:8192").arg(env!("CARGO_BIN_EXE_herald"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_herald"))
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("HERALD_DEV_API_KEY", "hrld_sigterm_test_key_0123456789")
        .env("HERALD__ENGINE__SHUTDOWN_GRACE_SECONDS", "2")
        .env("HERALD__SERVER__HEADER_READ_TIMEOUT_MS", "600000")
        .env("HERALD__SERVER__IDLE_TIMEOUT_MS", "600000");
    let (mut child, base) = spawn_serve(cmd).await;
    let pid = child.id().expect("pid");
    if std::path::Path::new("/usr/bin/prlimit").exists() {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line");
        let soft: Vec<&str> = files.split_whitespace().collect();
        assert_eq!(
            soft[3], "8192",
            "the soft limit is raised to the hard one: {files}"
        );
    }
    let mut half = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect");
    half.write_all(b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let exited = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    assert!(
        exited.is_ok(),
        "still running 10 s after SIGTERM with a 2 s grace period"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}
