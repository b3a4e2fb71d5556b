//! Starts Herald and the simulator in-process, and talks to them over HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald::app::Running;
use herald::config::Config;
use herald_sim::{Fault, Sim};
use serde_json::{json, Value};

pub struct TestServer {
    pub base: String,
    pub key: String,
    pub sim: Sim,
    pub sim_url: String,
    pub running: Option<Running>,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// The sandbox config pointed at `sim_url`, storing under `data_dir`, with
/// short retries so tests do not wait on back-off.
pub fn config(sim_url: &str, data_dir: &Path) -> Config {
    let mut cfg = Config::load(None)
        .expect("defaults load")
        .into_sandbox(sim_url);
    cfg.store.data_dir = data_dir.to_path_buf();
    for lane in cfg.lanes.all_mut() {
        lane.retry_base_ms = 50;
        lane.retry_cap_ms = 200;
    }
    cfg.engine.poll_interval_ms = 50;
    cfg.engine.shutdown_grace_seconds = 5;
    // Admission control sheds by how fast this machine delivers right now,
    // and CI machines are shared: a test about something else must not get
    // a 429 because the machine was busy. Its own tests turn it on
    // (priority.rs).
    cfg.server.admission = false;
    cfg
}

/// Sets every lane's attempts before a delivery is dead.
pub fn max_attempts(cfg: &mut Config, n: u32) {
    for lane in cfg.lanes.all_mut() {
        lane.max_attempts = n;
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sim = Sim::new(Some(42));
        let (sim_addr, _) = sim
            .start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("sim binds");
        let sim_url = format!("http://{sim_addr}");
        let mut cfg = config(&sim_url, tmp.path());
        tweak(&mut cfg);
        let data_dir = tmp.path().to_path_buf();
        let mut s = TestServer {
            base: String::new(),
            key: herald::api::generate_key(),
            sim,
            sim_url,
            running: None,
            http: reqwest::Client::new(),
            data_dir,
            _tmp: Some(tmp),
        };
        s.boot(cfg).await;
        s
    }

    /// Starts Herald (again) with `cfg`, on a new port, same data directory.
    pub async fn boot(&mut self, cfg: Config) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = Running::start(cfg, listener, Some(&self.key))
            .await
            .expect("herald starts");
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// A key for another tenant.
    pub async fn key_for(&self, tenant: &str) -> String {
        self.key_with(tenant, herald_core::store::Scopes::ALL).await
    }

    /// A key for `tenant` with only `scopes`.
    pub async fn key_with(&self, tenant: &str, scopes: herald_core::store::Scopes) -> String {
        let key = herald::api::generate_key();
        let store = &self.running.as_ref().expect("running").store;
        herald::app::add_key(store.as_ref(), tenant, &key, "test", scopes)
            .await
            .expect("key added");
        key
    }

    pub fn fault(&self, vendor: &str, fault: Fault) {
        self.sim.set_fault(vendor, fault).expect("valid fault");
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.post_as(&self.key, path, body, None).await
    }

    pub async fn post_as(
        &self,
        key: &str,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("request sent");
        decode(resp).await
    }

    /// Any method, with a JSON body or none, as this server's tenant.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.send_as(&self.key, method, path, body).await
    }

    pub async fn send_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, _, v) = decode(req.send().await.expect("request sent")).await;
        (status, v)
    }

    pub async fn get_as(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent");
        let (s, _, v) = decode(resp).await;
        (s, v)
    }

    /// A GET with no API key, for the ops endpoints.
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(&self.key, path).await
    }

    /// Unique deliveries the simulator accepted, all vendors.
    pub fn delivered(&self) -> u64 {
        self.sim.stats().values().map(|s| s.unique).sum()
    }

    /// Waits until the simulator has accepted `n` unique deliveries.
    pub async fn wait_delivered(&self, n: u64, within: Duration) {
        let ok = wait_until(within, || self.delivered() >= n).await;
        assert!(
            ok,
            "expected {n} deliveries at the simulator, saw {} ({:?})",
            self.delivered(),
            self.sim.stats()
        );
    }

    /// One provider account's entry on `GET /v1/providers`.
    pub async fn provider(&self, name: &str) -> Value {
        let (status, v) = self.get("/v1/providers").await;
        assert_eq!(status, 200, "{v}");
        v["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} is listed: {v}"))
    }

    /// Waits until `/v1/providers` shows the account's credential refused;
    /// its `credential_refused`.
    pub async fn wait_credential_refused(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = self.provider(name).await;
            if !p["credential_refused"].is_null() {
                return p["credential_refused"].clone();
            }
            assert!(Instant::now() < deadline, "no refusal shown: {p}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every channel of a notification is in a terminal state.
    pub async fn wait_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = self.get(&format!("/v1/notifications/{id}")).await;
            assert_eq!(status, 200, "{v}");
            if v["status"] == "completed" || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn decode(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, headers, v)
}

pub async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f()
}

pub fn sms(text: &str, priority: &str) -> Value {
    json!({"priority": priority, "channels": ["sms"],
        "recipient": {"phone": "+14155550100"}, "content": {"text": text}})
}

pub fn email(subject: &str) -> Value {
    json!({"channels": ["email"], "recipient": {"email": "ada@example.com"},
        "content": {"subject": subject, "text": "hello"}})
}

/// Runs a `herald serve` command and returns once it listens, with its base
/// URL. Killed when dropped.
pub async fn spawn_serve(mut cmd: tokio::process::Command) -> (tokio::process::Child, String) {
    cmd.env("RUST_LOG", "warn");
    herald::tooling::bench::process::spawn_serve(cmd)
        .await
        .expect("herald serve starts listening")
}

/// `herald keys create --tenant TENANT <store args>` with the real binary;
/// returns the printed key.
pub async fn create_key(tenant: &str, store_args: &[&std::ffi::OsStr]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--tenant", tenant])
        .args(store_args)
        .output()
        .await
        .expect("keys create runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Makes `schema` afresh in the PostgreSQL database at `url`; returns the
/// URL that puts a connection in it.
pub async fn fresh_schema(url: &str, schema: &str) -> String {
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to PostgreSQL");
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect("schema");
    }
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// `herald kafka-mock` as a user trying the Kafka bus would run it (one
/// broker, two partitions a lane): the child (killed when dropped) and the
/// bootstrap servers it prints on its first line.
pub async fn kafka_mock() -> (tokio::process::Child, String) {
    let mut mock = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["kafka-mock", "--brokers", "1", "--partitions", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("herald kafka-mock starts");
    let mut first = String::new();
    let mut lines = tokio::io::BufReader::new(mock.stdout.take().expect("stdout"));
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await
    .expect("bootstrap servers printed in time")
    .expect("read");
    (mock, first.trim().to_owned())
}
