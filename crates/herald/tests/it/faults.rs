//! Dependencies that fail for real, for the outage tests: a Redis server of
//! the test's own on a free port, which it pauses (SIGSTOP: connections
//! hang), kills and restarts; and a TCP proxy in front of a real server
//! (PostgreSQL) that the test can cut (connections reset, new ones
//! refused) or black-hole (connections accepted and never answered).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a
/// server started right after).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `redis-server` on a port of its own, keeping nothing on disk.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// `None` (with a notice) when `redis-server` is not installed.
    pub async fn start() -> Option<RedisServer> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: redis-server is not installed (.ci/run installs it)"
            );
            return None;
        }
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.restart().await;
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        pong.is_ok()
    }

    /// The keys it holds that match `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Freezes the server: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills it (SIGKILL): connections reset, new ones are refused.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process dies on SIGKILL too.
            c.start_kill().expect("SIGKILL");
            c.wait().await.expect("reaped");
        }
    }
}

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Passes bytes both ways.
    Pass = 0,
    /// Resets every connection and refuses new ones: the server is down.
    Refuse = 1,
    /// Accepts connections and forwards nothing either way: the server (or
    /// the network) hangs.
    BlackHole = 2,
}

/// A TCP proxy on a free port in front of `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    changed: watch::Sender<u8>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let (changed, _) = watch::channel(Mode::Pass as u8);
        let (m, tx) = (mode.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                match m.load(Ordering::SeqCst) {
                    x if x == Mode::Refuse as u8 => {
                        let _ = client.set_zero_linger();
                    }
                    x if x == Mode::BlackHole as u8 => {
                        // Held open, never answered, until the mode changes.
                        let mut rx = tx.subscribe();
                        tokio::spawn(async move {
                            let _held = client;
                            let _ = rx.changed().await;
                        });
                    }
                    _ => {
                        let rx = tx.subscribe();
                        tokio::spawn(pipe(client, upstream, rx));
                    }
                }
            }
        });
        Proxy {
            addr,
            mode,
            changed,
            _task: task,
        }
    }

    /// Switches mode; connections made before are cut when it is not `Pass`.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        let _ = self.changed.send(mode as u8);
    }
}

/// Forwards until either side closes or the proxy leaves `Pass` mode: on
/// `Refuse` both sides are reset (as when a server dies); on `BlackHole`
/// both are held open and silent until the mode changes again.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut changed: watch::Receiver<u8>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mode = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        m = async {
            while changed.changed().await.is_ok() {
                let m = *changed.borrow();
                if m != Mode::Pass as u8 {
                    return m;
                }
            }
            Mode::Refuse as u8
        } => m,
    };
    if mode == Mode::BlackHole as u8 {
        let _ = changed.changed().await;
    }
    // Reset rather than close politely: a dead server says nothing.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
}

/// The machine's PostgreSQL (`HERALD_TEST_POSTGRES_URL`) behind a proxy,
/// in a fresh schema: the proxy and the store URL through it. `None`, with
/// a notice, without the variable.
pub async fn postgres_behind_proxy(schema: &str) -> Option<(Proxy, String)> {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the PostgreSQL outage tests (set HERALD_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
        return None;
    };
    let in_schema = crate::utils::fresh_schema(&url, schema).await;
    let mut parsed = url::Url::parse(&in_schema).expect("a postgres:// URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(5432);
    let upstream = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await;
    parsed.set_host(Some("127.0.0.1")).expect("host");
    parsed.set_port(Some(proxy.addr.port())).expect("port");
    Some((proxy, parsed.to_string()))
}
