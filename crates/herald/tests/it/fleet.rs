//! Fleet-wide state in Redis: nodes share vendors' send rates and open
//! circuits, and keep working on their own when Redis is not there. Uses the
//! machine's Redis at `HERALD_TEST_REDIS_URL` (skipped with a notice
//! without it); each test has its own key prefix.

use std::time::{Duration, Instant};

use herald::config::RedisConfig;
use herald::engine::fleet::Fleet;
use herald_core::secret::Secret;
use herald_sim::Fault;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::utils::{max_attempts, TestServer};

fn redis_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        // Straight to stderr: the test harness captures `eprintln!`.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the Redis fleet tests (set HERALD_TEST_REDIS_URL, e.g. redis://127.0.0.1:6379)"
        );
    }
    url
}

fn redis(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: Secret::new(url),
        key_prefix: prefix.to_owned(),
        sync_interval_ms: 50,
    }
}

/// A node's view of the fleet, once Redis has answered.
async fn node(cfg: &RedisConfig) -> std::sync::Arc<Fleet> {
    let fleet = Fleet::start(cfg, CancellationToken::new())
        .expect("valid url")
        .expect("a url was given");
    let deadline = Instant::now() + Duration::from_secs(10);
    // A provider no test limits: its bucket is big enough never to refuse.
    while fleet.take("warm-up", 1_000_000, 1_000_000).await.is_none() {
        assert!(Instant::now() < deadline, "redis answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet
}

#[tokio::test]
async fn nodes_share_one_send_rate() {
    let Some(url) = redis_url() else { return };
    let cfg = redis(&url, &format!("herald-test-{}", uuid::Uuid::now_v7()));
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    // 10/s with a burst of 10, asked 40 times in quick turns by two nodes:
    // the fleet gets the burst (and the odd token that accrues meanwhile),
    // not a burst per node.
    let mut allowed = 0;
    let started = Instant::now();
    for i in 0..40 {
        let n = if i % 2 == 0 { &a } else { &b };
        if let Some(Ok(())) = n.take("twilio", 10, 10).await {
            allowed += 1;
        }
    }
    let accrued = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (10..=10 + accrued).contains(&allowed),
        "{allowed} calls allowed; the fleet's burst is 10 (+{accrued} accrued)"
    );
    // A refusal says how long until the next token.
    match a.take("twilio", 10, 10).await {
        Some(Err(wait)) => assert!(wait <= Duration::from_millis(100), "{wait:?}"),
        other => panic!("expected a wait, got {other:?}"),
    }
}

fn sms(phone: &str) -> Value {
    json!({"priority": "critical", "channels": ["sms"],
        "recipient": {"phone": phone}, "content": {"text": "code 123456"}})
}

async fn circuit(s: &TestServer, name: &str) -> String {
    let (_, v) = s.get("/v1/providers").await;
    v["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .map(|p| {
            p["circuit"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_circuit_one_node_opens_is_open_on_every_node() {
    let Some(url) = redis_url() else { return };
    let cfg = redis(&url, &format!("herald-test-{}", uuid::Uuid::now_v7()));
    let tweak = |c: &mut herald::config::Config| {
        c.redis = cfg.clone();
        c.providers
            .get_mut("twilio")
            .expect("twilio")
            .circuit_open_ms = Some(30_000);
        max_attempts(c, 100);
    };
    let a = TestServer::start_with(tweak).await;
    let b = TestServer::start_with(tweak).await;
    // Node A's Twilio is down; critical SMS fail over to SNS at once, and
    // after five failures A opens Twilio's circuit.
    a.fault(
        "twilio",
        Fault {
            outage: true,
            ..Fault::default()
        },
    );
    for i in 0..8 {
        let (status, _, v) = a
            .post("/v1/notifications", &sms(&format!("+1415557{i:04}")))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    a.wait_delivered(8, Duration::from_secs(10)).await;
    assert_eq!(circuit(&a, "twilio").await, "open");
    // Node B never called Twilio, and has it open too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut state = circuit(&b, "twilio").await;
    while state != "open" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        state = circuit(&b, "twilio").await;
    }
    assert_eq!(state, "open", "node B's twilio circuit follows node A's");
    assert_eq!(b.sim.stats().get("twilio").map_or(0, |t| t.received), 0);
    // So B's critical SMS go straight to SNS, without trying Twilio.
    let (status, _, v) = b.post("/v1/notifications", &sms("+14155579999")).await;
    assert_eq!(status, 202, "{v}");
    b.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(b.sim.stats().get("twilio").map_or(0, |t| t.received), 0);
    assert_eq!(b.sim.stats()["sns"].unique, 1);
}

#[tokio::test]
async fn without_redis_a_node_keeps_working_on_its_own_limits() {
    // Nothing listens on port 1: Redis is unreachable from the start.
    let s = TestServer::start_with(|c| {
        c.redis = redis("redis://127.0.0.1:1", "herald-test-none");
        let t = c.providers.get_mut("twilio").expect("twilio");
        t.rate_limit_per_second = Some(100);
        t.rate_limit_burst = Some(100);
    })
    .await;
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);
    for i in 0..5 {
        let (status, _, v) = s
            .post("/v1/notifications", &sms(&format!("+1415558{i:04}")))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    s.wait_delivered(5, Duration::from_secs(10)).await;
    assert_eq!(s.sim.stats()["twilio"].unique, 5);
}
