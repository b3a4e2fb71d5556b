//! The crash test: `herald serve` (the real binary, on a config file) is
//! killed with SIGKILL while thousands of deliveries are in flight and the
//! vendors misbehave — errors, latency, throttling, and timeouts after they
//! accepted — then restarted on the same data directory. At the simulator:
//! every notification that got a 202 reached each of its channels (zero
//! lost) and each delivery key was accepted once, by one vendor (zero
//! duplicates delivered). The client is killed off mid-submission too, and
//! resubmits what it had no answer for with the same idempotency keys, as a
//! client should. Raw repeated requests for a key (retries of a timeout the
//! vendor had accepted, dropped by its idempotency key) are reported, not
//! failed. A third of the notifications name a stored recipient by id alone
//! (resolved at acceptance, before the kill and after the restart).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_sim::{Fault, Sim};
use serde_json::{json, Value};
use tokio::process::Command;

use crate::utils::{create_key, decode, spawn_serve};

/// Fixed, so a failure can be replayed with the same fault decisions.
const SEED: u64 = 20_261_121;
const NOTIFICATIONS: usize = 2_000;
const BATCH: usize = 100;

fn config(sim_url: &str, data_dir: &std::path::Path) -> String {
    let lane = "max_attempts = 200\nretry_base_ms = 20\nretry_cap_ms = 300";
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
# The faults build a backlog on purpose, and every notification must be
# taken in for the count at the end: admission control, which would shed
# part of it, is tested in priority.rs.
admission = false

[store]
data_dir = "{data}"

[engine]
# Short, so the deliveries the killed process held come back quickly.
lease_seconds = 2
poll_interval_ms = 50
shutdown_grace_seconds = 2

[http]
connect_timeout_ms = 500
request_timeout_ms = 600

[circuit_breaker]
open_ms = 1000

# Every lane keeps an ambiguous outcome on its provider. (Critical defaults
# to failing over from one: a 2FA code must arrive, at the risk of a second
# copy through the backup. That trade is documented, not tested here.)
[lanes.critical]
failover_ambiguous = false
{lane}
[lanes.high]
{lane}
[lanes.normal]
{lane}
[lanes.low]
{lane}

# Small pools, so a backlog builds up for the kill to cut through.
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
base_url = "{sim}"
api_key = "SG.crash-test"

[providers.twilio]
base_url = "{sim}"
account_sid = "ACcrashtest"
auth_token = "crash-test"

[providers.sns]
base_url = "{sim}"
access_key_id = "AKIACRASHTEST"
secret_access_key = "crash-test"
"#,
        data = data_dir.display(),
        sim = sim_url,
    )
}

fn faults(sim: &Sim) {
    let hang = Some(1_500); // longer than the 600 ms request timeout
    sim.set_fault(
        "twilio",
        Fault {
            latency_min_ms: 20,
            latency_max_ms: 80,
            error_rate: 0.08,
            timeout_after_accept_rate: 0.03,
            hang_ms: hang,
            ..Fault::default()
        },
    )
    .expect("fault");
    sim.set_fault(
        "sendgrid",
        Fault {
            latency_min_ms: 20,
            latency_max_ms: 80,
            error_rate: 0.05,
            rate_limit_rate: 0.03,
            retry_after_s: Some(1),
            timeout_after_accept_rate: 0.03,
            hang_ms: hang,
            ..Fault::default()
        },
    )
    .expect("fault");
    sim.set_fault(
        "sns",
        Fault {
            latency_min_ms: 20,
            latency_max_ms: 80,
            error_rate: 0.05,
            timeout_after_accept_rate: 0.02,
            hang_ms: hang,
            ..Fault::default()
        },
    )
    .expect("fault");
}

/// Notification `i`'s addresses: inline, or (every third) in the stored
/// recipient it names by id alone (`store_recipients`).
fn addresses(i: usize) -> Value {
    json!({"email": format!("crash{i}@example.com"), "phone": format!("+1415{:07}", i)})
}

fn notification(i: usize) -> Value {
    let lane = ["critical", "high", "normal", "low"][i % 4];
    let recipient = if i.is_multiple_of(3) {
        json!({"id": format!("person-{i}")})
    } else {
        addresses(i)
    };
    json!({
        "priority": lane,
        "idempotency_key": format!("crash-{i}"),
        "channels": ["email", "sms"],
        "recipient": recipient,
        "content": {"subject": format!("crash test {i}"), "text": format!("message {i} ✓")}
    })
}

/// Stores the recipients the notifications name by id.
async fn store_recipients(base: &str, key: &str) {
    let http = reqwest::Client::new();
    for i in (0..NOTIFICATIONS).step_by(3) {
        let resp = http
            .put(format!("{base}/v1/recipients/person-{i}"))
            .bearer_auth(key)
            .json(&addresses(i))
            .send()
            .await
            .expect("stored");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

/// Posts batches from `from` on; stops at the first that gets no answer.
/// Returns the accepted indexes and where it stopped.
async fn submit(
    base: String,
    key: String,
    from: usize,
    submitted: Arc<AtomicUsize>,
) -> (Vec<usize>, usize) {
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    for start in (from..NOTIFICATIONS).step_by(BATCH) {
        let items: Vec<Value> = (start..start + BATCH).map(notification).collect();
        let sent = http
            .post(format!("{base}/v1/notifications/batch"))
            .bearer_auth(&key)
            .json(&json!({ "notifications": items }))
            .send()
            .await;
        let Ok(resp) = sent else {
            return (accepted, start);
        };
        let (status, _, v) = decode(resp).await;
        if status != 200 {
            return (accepted, start);
        }
        for (j, r) in v["results"].as_array().into_iter().flatten().enumerate() {
            if r["status"] == "accepted" {
                accepted.push(start + j);
            }
        }
        submitted.store(start + BATCH, Ordering::Relaxed);
    }
    (accepted, NOTIFICATIONS)
}

async fn serve(config: &std::path::Path) -> (tokio::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--config"]).arg(config);
    spawn_serve(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_and_delivers_nothing_twice() {
    let sim = Sim::new(Some(SEED));
    sim.trust_twilio_account("ACcrashtest", "crash-test");
    // The SMS backup works too: its keys are ones the simulated AWS knows
    // (it checks SigV4 for real), so a failover reaches a working vendor.
    sim.trust_aws_key("AKIACRASHTEST", "crash-test");
    let (sim_addr, _sim_task) = sim
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim binds");
    faults(&sim);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("herald.toml");
    std::fs::write(&cfg, config(&format!("http://{sim_addr}"), dir.path())).expect("config");
    let key = create_key(
        "crash",
        &["--init".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    )
    .await;

    let (mut herald, base) = serve(&cfg).await;
    store_recipients(&base, &key).await;
    // Submit in the background; the kill cuts it off.
    let submitted = Arc::new(AtomicUsize::new(0));
    let submitter = tokio::spawn(submit(base, key.clone(), 0, submitted.clone()));
    let unique = |sim: &Sim| sim.stats().values().map(|s| s.unique).sum::<u64>();
    let expected = (NOTIFICATIONS * 2) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while submitted.load(Ordering::Relaxed) < NOTIFICATIONS * 3 / 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    herald.start_kill().expect("SIGKILL");
    herald.wait().await.expect("reaped");
    let at_kill = unique(&sim);
    let (mut accepted, resume_at) = submitter.await.expect("submitter");
    let backlog = (resume_at as u64 * 2).saturating_sub(at_kill);
    assert!(
        backlog >= 1_000,
        "killed with thousands in flight: {backlog} accepted deliveries not yet sent"
    );

    // Restart on the same data directory; the client resubmits everything
    // it had no answer for, with the same keys, and then it all finishes.
    let (_herald, base) = serve(&cfg).await;
    let (more, end) = submit(base, key, resume_at, submitted).await;
    assert_eq!(end, NOTIFICATIONS, "the restarted server takes the rest");
    accepted.extend(more);
    accepted.sort_unstable();
    accepted.dedup();
    assert_eq!(
        accepted.len(),
        NOTIFICATIONS,
        "every notification acknowledged once"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while unique(&sim) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little longer, so a late duplicate would show.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let entries = sim.entries();
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_address: HashMap<(&str, &str), usize> = HashMap::new();
    for e in &entries {
        by_key.entry(e.key.as_str()).or_default().push(e.vendor);
        let channel = if e.vendor == "sendgrid" {
            "email"
        } else {
            "sms"
        };
        *by_address
            .entry((channel, e.recipient.as_str()))
            .or_default() += 1;
    }
    let mut lost = Vec::new();
    for i in &accepted {
        let email = format!("crash{i}@example.com");
        let phone = format!("+1415{:07}", i);
        if !by_address.contains_key(&("email", email.as_str())) {
            lost.push(email);
        }
        if !by_address.contains_key(&("sms", phone.as_str())) {
            lost.push(phone);
        }
    }
    let doubled_keys: Vec<_> = by_key.iter().filter(|(_, v)| v.len() > 1).collect();
    let doubled_addresses: Vec<_> = by_address.iter().filter(|(_, n)| **n > 1).collect();
    let stats = sim.stats();
    let repeats: u64 = stats.values().map(|s| s.duplicates).sum();
    let via_sns = stats.get("sns").map_or(0, |s| s.unique);
    let vendors: HashSet<_> = entries.iter().map(|e| e.vendor).collect();
    eprintln!(
        "crash test (seed {SEED}): {} notifications, {expected} deliveries; killed with {resume_at} \
         notifications submitted, {at_kill} deliveries made and {backlog} pending; \
         after restart {} delivered ({via_sns} via the SNS backup); lost {}, duplicated {}; \
         raw repeated requests dropped by vendor keys: {repeats}; vendor stats {stats:?}",
        accepted.len(),
        entries.len(),
        lost.len(),
        doubled_keys.len() + doubled_addresses.len(),
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(
        doubled_keys.is_empty(),
        "keys accepted twice: {doubled_keys:?}"
    );
    assert!(
        doubled_addresses.is_empty(),
        "recipients reached twice: {doubled_addresses:?}"
    );
    assert_eq!(entries.len() as u64, expected);
    assert!(vendors.contains("twilio") && vendors.contains("sendgrid"));
}
