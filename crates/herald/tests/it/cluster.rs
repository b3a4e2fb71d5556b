//! A fleet on PostgreSQL: the real binary as six processes sharing one
//! database: two API nodes (`--roles api`), and two workers for each of
//! email and SMS (`--roles worker --channels …`), claiming from the same
//! table with `FOR UPDATE SKIP LOCKED`. Notifications go to both API nodes
//! while the vendors misbehave; one email worker is SIGKILLed mid-run. At
//! the simulator: every accepted notification reached each of its channels
//! (zero lost) and each delivery key and each recipient was reached once
//! (zero duplicated). Needs `HERALD_TEST_POSTGRES_URL`; skipped with a
//! notice without it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_sim::{Fault, Sim};
use serde_json::{json, Value};
use tokio::process::Command;

use crate::utils::{create_key, decode, spawn_serve};

const SEED: u64 = 20_261_122;
const NOTIFICATIONS: usize = 1_000;
const BATCH: usize = 50;

fn postgres_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        // Straight to stderr: the test harness captures `eprintln!`.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the multi-node PostgreSQL test (set HERALD_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
    }
    url
}

fn config(sim_url: &str, store_url: &str, kafka: &str) -> String {
    let lane = "max_attempts = 200\nretry_base_ms = 20\nretry_cap_ms = 300";
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[store]
kind = "postgres"
url = "{store_url}"
writers = 2
max_connections = 8

[kafka]
brokers = "{kafka}"
# Seconds: new work comes through Kafka; the sweep brings back what the
# killed worker held.
sweep_interval_ms = 3000

[engine]
# Short, so what the killed worker held comes back quickly.
lease_seconds = 2
poll_interval_ms = 50
shutdown_grace_seconds = 2

[http]
connect_timeout_ms = 500
request_timeout_ms = 600

[circuit_breaker]
open_ms = 1000

[lanes.critical]
failover_ambiguous = false
{lane}
[lanes.high]
{lane}
[lanes.normal]
{lane}
[lanes.low]
{lane}

[channels.email]
concurrency = 16
reserved_critical = 2
[channels.sms]
concurrency = 16
reserved_critical = 2
[channels.push]
providers = []
[channels.webhook]
providers = []

[providers.sendgrid]
base_url = "{sim_url}"
api_key = "SG.cluster-test"

[providers.twilio]
base_url = "{sim_url}"
account_sid = "ACclustertest"
auth_token = "cluster-test"

[providers.sns]
base_url = "{sim_url}"
access_key_id = "AKIACLUSTERTEST"
secret_access_key = "cluster-test"
"#
    )
}

fn notification(i: usize) -> Value {
    let lane = ["critical", "high", "normal", "low"][i % 4];
    json!({
        "priority": lane,
        "idempotency_key": format!("cluster-{i}"),
        "channels": ["email", "sms"],
        "recipient": {"email": format!("node{i}@example.com"), "phone": format!("+1415{:07}", i)},
        "content": {"subject": format!("cluster {i}"), "text": format!("message {i} ✓")}
    })
}

async fn node(
    config: &std::path::Path,
    roles: &str,
    channels: Option<&str>,
) -> (tokio::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--roles", roles]);
    if let Some(c) = channels {
        cmd.args(["--channels", c]);
    }
    spawn_serve(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_loses_nothing_and_sends_nothing_twice_when_a_worker_dies() {
    if let Some(url) = postgres_url() {
        fleet(&url, "hs_cluster", None).await;
    }
}

/// The same fleet with Kafka as its bus (librdkafka's mock cluster, which
/// the nodes reach over TCP): API nodes write outbox events, a relay node
/// publishes them, and the workers consume them in one group per channel.
/// The relay is also SIGKILLed a quarter of the way in and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_and_kafka_loses_nothing_and_sends_nothing_twice_when_a_worker_dies() {
    let Some(url) = postgres_url() else {
        return;
    };
    let cluster = herald_bus::kafka::mock_cluster(3, 4, "herald").expect("mock cluster");
    fleet(&url, "hs_cluster_kafka", Some(&cluster.bootstrap_servers())).await;
}

async fn fleet(url: &str, schema: &str, kafka: Option<&str>) {
    let store_url = crate::utils::fresh_schema(url, schema).await;

    let sim = Sim::new(Some(SEED));
    sim.trust_twilio_account("ACclustertest", "cluster-test");
    // The SMS backup works too: its keys are ones the simulated AWS knows
    // (it checks SigV4 for real), so a failover reaches a working vendor.
    sim.trust_aws_key("AKIACLUSTERTEST", "cluster-test");
    let (sim_addr, _sim_task) = sim
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim binds");
    for vendor in ["sendgrid", "twilio", "sns"] {
        let fault = Fault {
            latency_min_ms: 10,
            latency_max_ms: 40,
            error_rate: 0.05,
            timeout_after_accept_rate: 0.02,
            hang_ms: Some(1_500), // longer than the 600 ms request timeout
            ..Fault::default()
        };
        sim.set_fault(vendor, fault).expect("fault");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("herald.toml");
    let sim_url = format!("http://{sim_addr}");
    std::fs::write(&cfg, config(&sim_url, &store_url, kafka.unwrap_or(""))).expect("config");
    let key = create_key(
        "cluster",
        &["--init".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    )
    .await;

    let (_api1, base1) = node(&cfg, "api", None).await;
    let (_api2, base2) = node(&cfg, "api", None).await;
    let (mut email1, worker) = node(&cfg, "worker", Some("email")).await;
    let (_email2, _) = node(&cfg, "worker", Some("email")).await;
    let (_sms1, _) = node(&cfg, "worker", Some("sms")).await;
    let (_sms2, _) = node(&cfg, "worker", Some("sms")).await;
    // With Kafka, a relay node publishes what the API nodes store.
    let mut relay = match kafka {
        Some(_) => Some(node(&cfg, "relay", None).await),
        None => None,
    };
    let mut relay_restarted = false;

    // An API node has no workers and a worker node no API.
    let http = reqwest::Client::new();
    let (status, _, _) = decode(
        http.post(format!("{base1}/v1/notifications"))
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 422, "the API node takes notifications");
    let resp = http
        .post(format!("{worker}/v1/notifications"))
        .bearer_auth(&key)
        .json(&notification(0))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 404, "a worker node has no API");
    let ready = http
        .get(format!("{worker}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "but it answers readiness");

    // Submit through both API nodes, alternating batches.
    let mut accepted = 0;
    let unique = |sim: &Sim| sim.stats().values().map(|s| s.unique).sum::<u64>();
    let mut killed_at = None;
    let started = Instant::now();
    for (b, start) in (0..NOTIFICATIONS).step_by(BATCH).enumerate() {
        let base = if b % 2 == 0 { &base1 } else { &base2 };
        // Items admission control refuses (a lane behind while the relay
        // or a worker is down: nothing stored) are sent again after a
        // pause with the same idempotency keys, as a client honouring
        // Retry-After would; every notification must be taken in once.
        let mut numbers: Vec<usize> = (start..start + BATCH).collect();
        for _ in 0..240 {
            let items: Vec<Value> = numbers.iter().map(|&i| notification(i)).collect();
            let resp = http
                .post(format!("{base}/v1/notifications/batch"))
                .bearer_auth(&key)
                .json(&json!({ "notifications": items }))
                .send()
                .await
                .expect("batch");
            let (status, _, v) = decode(resp).await;
            assert_eq!(status, 200, "{v}");
            let results = v["results"].as_array().cloned().unwrap_or_default();
            assert_eq!(results.len(), numbers.len(), "{v}");
            let mut again = Vec::new();
            for (r, i) in results.iter().zip(&numbers) {
                if r["status"] == "accepted" {
                    accepted += 1;
                } else {
                    assert_eq!(
                        r["error"]["type"], "urn:herald:problem:lane-behind",
                        "only admission control may refuse: {r}"
                    );
                    again.push(*i);
                }
            }
            if again.is_empty() {
                break;
            }
            numbers = again;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A quarter of the way in, the relay is SIGKILLed mid-stream and a
        // new one started: it takes over once the dead one's lease lapses,
        // from the first event not marked published.
        if !relay_restarted && b == NOTIFICATIONS / BATCH / 4 {
            if let Some((mut dead, _)) = relay.take() {
                dead.start_kill().expect("SIGKILL the relay");
                dead.wait().await.expect("reaped");
                relay = Some(node(&cfg, "relay", None).await);
                relay_restarted = true;
            }
        }
        // Kill one email worker once deliveries are well under way.
        if killed_at.is_none() && unique(&sim) >= (NOTIFICATIONS / 2) as u64 {
            email1.start_kill().expect("SIGKILL");
            email1.wait().await.expect("reaped");
            killed_at = Some(unique(&sim));
        }
    }
    assert_eq!(accepted, NOTIFICATIONS);
    if killed_at.is_none() {
        // Submitting outran the workers (Kafka's first group assignment
        // takes seconds): kill once deliveries are well under way.
        let deadline = Instant::now() + Duration::from_secs(60);
        while unique(&sim) < (NOTIFICATIONS / 2) as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        email1.start_kill().expect("SIGKILL");
        email1.wait().await.expect("reaped");
        killed_at = Some(unique(&sim));
    }

    let expected = (NOTIFICATIONS * 2) as u64;
    eprintln!(
        "all taken in after {:?}, {} delivered",
        started.elapsed(),
        unique(&sim)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut progress = Instant::now();
    while unique(&sim) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if progress.elapsed() >= Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!("after {:?}: {} delivered", started.elapsed(), unique(&sim));
        }
    }
    // A little longer, so a late duplicate would show.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let entries = sim.entries();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    let mut by_address: HashMap<&str, usize> = HashMap::new();
    for e in &entries {
        *by_key.entry(e.key.as_str()).or_default() += 1;
        *by_address.entry(e.recipient.as_str()).or_default() += 1;
    }
    let lost: Vec<String> = (0..NOTIFICATIONS)
        .flat_map(|i| [format!("node{i}@example.com"), format!("+1415{:07}", i)])
        .filter(|a| !by_address.contains_key(a.as_str()))
        .collect();
    let doubled: Vec<_> = by_address.iter().filter(|(_, n)| **n > 1).collect();
    let doubled_keys = by_key.values().filter(|n| **n > 1).count();
    let stats = sim.stats();
    let repeats: u64 = stats.values().map(|s| s.duplicates).sum();
    eprintln!(
        "fleet test (seed {SEED}, {}): {NOTIFICATIONS} notifications through 2 API nodes, \
         {expected} deliveries by 4 workers; an email worker killed at {killed_at:?} deliveries; \
         delivered {}, lost {}, duplicated {}; raw repeats dropped by vendor keys: {repeats}",
        if kafka.is_some() {
            "kafka bus"
        } else {
            "local bus"
        },
        entries.len(),
        lost.len(),
        doubled.len() + doubled_keys,
    );
    if let Some((_, relay)) = &relay {
        // Every notification went through Kafka: every stored event was
        // published (none is left in the outbox), the restarted relay
        // publishing those the killed one had not.
        let db = sqlx::PgPool::connect(&store_url).await.expect("connect");
        let unpublished: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL")
                .fetch_one(&db)
                .await
                .expect("outbox");
        db.close().await;
        assert_eq!(unpublished, 0, "events left unpublished in the outbox");
        let metrics = http
            .get(format!("{relay}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let published: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("herald_bus_published_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // The restarted relay published at least everything stored after
        // the kill, and each event once at most.
        let after_kill = NOTIFICATIONS - (NOTIFICATIONS / BATCH / 4 + 1) * BATCH;
        eprintln!("the restarted relay published {published} events");
        assert!(
            (after_kill..=NOTIFICATIONS).contains(&(published as usize)),
            "events the restarted relay published: {published}"
        );
    }
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(doubled.is_empty(), "recipients reached twice: {doubled:?}");
    assert_eq!(doubled_keys, 0, "delivery keys accepted twice");
    assert_eq!(entries.len() as u64, expected);
}

/// `herald serve` in the sandbox with Kafka at `brokers`, as `roles`.
async fn sandbox_on_kafka(
    dir: &std::path::Path,
    brokers: &str,
    roles: &str,
) -> (tokio::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--roles", roles])
        .arg("--data-dir")
        .arg(dir)
        .env("HERALD_DEV_API_KEY", "hrld_readiness_test_key_0123456789")
        .env("HERALD__KAFKA__BROKERS", brokers);
    spawn_serve(cmd).await
}

/// A worker or relay node is ready only while Kafka answers; an API node,
/// which only writes the outbox in the store, does not depend on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_the_kafka_connection_on_nodes_that_use_it() {
    let http = reqwest::Client::new();
    let ready = |base: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .expect("readyz");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };

    // Nothing listens on port 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_worker, base) = sandbox_on_kafka(dir.path(), "127.0.0.1:1", "worker").await;
    let (status, body) = ready(base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["store"], "ok");
    assert!(
        body["bus"].as_str().is_some_and(|b| b.starts_with("kafka")),
        "{body}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_api, base) = sandbox_on_kafka(dir.path(), "127.0.0.1:1", "api").await;
    let (status, body) = ready(base).await;
    assert_eq!(status, 200, "an API node only needs its store: {body}");

    // `herald kafka-mock`, as a user trying the Kafka bus would run it: it
    // prints the bootstrap servers on its first line.
    let (_mock, brokers) = crate::utils::kafka_mock().await;
    let brokers = brokers.as_str();
    assert!(brokers.starts_with("127.0.0.1:"), "{brokers:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_relay, base) = sandbox_on_kafka(dir.path(), brokers, "relay").await;
    let (status, body) = ready(base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bus"], "ok");
}
