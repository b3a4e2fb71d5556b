//! Shared dependencies failing mid-run, for real: the test's own Redis
//! paused and killed under load; PostgreSQL cut off and black-holed behind
//! a proxy. What a user checks: deliveries go on (or fail fast), nothing is
//! lost and nothing reaches a vendor twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::config::{Config, RedisConfig};
use herald_core::secret::Secret;
use serde_json::json;

use crate::faults::{Mode, RedisServer};
use crate::utils::{max_attempts, wait_until, TestServer};

/// SMS through Twilio then SNS, each rate-limited and sharing its rate
/// through `redis`; short leases and timeouts, so a stall longer than a
/// lease shows within seconds; and no lane may fail over after an
/// ambiguous outcome, so any second copy is Herald's doing.
fn shared_rates(c: &mut Config, redis: &str) {
    c.redis = RedisConfig {
        url: Secret::new(redis),
        key_prefix: "herald-outage".into(),
        sync_interval_ms: 50,
    };
    c.http.request_timeout_ms = 1_000;
    c.http.connect_timeout_ms = 500;
    c.engine.lease_seconds = 3;
    for name in ["twilio", "sns"] {
        let p = c.providers.get_mut(name).expect("provider");
        p.rate_limit_per_second = Some(500);
        p.rate_limit_burst = Some(50);
    }
    one_vendor_per_delivery(c);
}

/// No lane fails over after an ambiguous outcome, and attempts do not run
/// out: any second copy a test sees is Herald's doing.
fn one_vendor_per_delivery(c: &mut Config) {
    for lane in c.lanes.all_mut() {
        lane.failover_ambiguous = false;
    }
    max_attempts(c, 100);
}

/// Posts an SMS to a new number every few milliseconds until `stop`;
/// returns the numbers accepted.
fn steady_load(
    s: &TestServer,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (http, base, key) = (s.http.clone(), s.base.clone(), s.key.clone());
    tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let phone = format!("+1415{i:07}");
            let lane = ["critical", "high", "normal"][i as usize % 3];
            let body = json!({"priority": lane, "channels": ["sms"],
                "recipient": {"phone": phone}, "content": {"text": "code 123456"}});
            let resp = http
                .post(format!("{base}/v1/notifications"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
            accepted.push(phone);
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        accepted
    })
}

/// Every accepted number reached once, by one vendor, each delivery key
/// sent once: no second copy anywhere.
async fn assert_each_sent_once(s: &TestServer, accepted: &[String]) {
    let all = wait_until(Duration::from_secs(60), || {
        s.delivered() >= accepted.len() as u64
    })
    .await;
    // A little longer, so a late second copy would show.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut by_phone: HashMap<String, usize> = HashMap::new();
    for e in s.sim.entries() {
        *by_phone.entry(e.recipient.clone()).or_default() += 1;
    }
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|p| !by_phone.contains_key(*p))
        .collect();
    let twice: Vec<_> = by_phone.iter().filter(|(_, n)| **n > 1).collect();
    let stats = s.sim.stats();
    let repeated: u64 = stats.values().map(|v| v.duplicates).sum();
    assert!(
        all && lost.is_empty(),
        "lost {} of {}: {:?}",
        lost.len(),
        accepted.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "{} numbers reached by two vendors: {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(
        repeated, 0,
        "delivery keys sent to a vendor more than once: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_neither_stalls_delivery_nor_sends_anything_twice() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let s = TestServer::start_with(|c| shared_rates(c, &redis.url())).await;
    // The fleet's bucket is in use before anything fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&s, stop.clone());
    assert!(
        wait_until(Duration::from_secs(10), || s.delivered() >= 50).await,
        "deliveries started"
    );
    assert!(!redis.keys("herald-outage:rate:*").await.is_empty());

    // Frozen: connections hang. Deliveries go on at once on local limits.
    redis.pause();
    let frozen = s.delivered();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_pause = s.delivered() - frozen;
    // Dead: connections reset, new ones refused.
    redis.resume();
    redis.kill().await;
    let killed = s.delivered();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_kill = s.delivered() - killed;
    // Back, empty: the nodes use it again within seconds.
    redis.restart().await;
    let back = Instant::now();
    let mut used_again = false;
    while back.elapsed() < Duration::from_secs(10) {
        if !redis.keys("herald-outage:rate:*").await.is_empty() {
            used_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let used_again_after = back.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = load.await.expect("load");
    eprintln!(
        "redis outage: {} accepted; {during_pause} delivered while Redis was frozen (4 s), \
         {during_kill} while it was down (4 s); shared rate used again {used_again_after:?} after it came back",
        accepted.len()
    );
    assert!(
        during_pause > 0,
        "nothing was delivered while Redis was frozen"
    );
    assert!(
        during_kill > 0,
        "nothing was delivered while Redis was down"
    );
    assert!(
        used_again,
        "Redis was not used again within 10 s of coming back"
    );
    assert_each_sent_once(&s, &accepted).await;
}

/// A provider that takes one call at a time, each slow: most deliveries
/// wait for its slot longer than their lease. None may then start a call
/// under a lease another worker may hold by now: each is given back and
/// claimed afresh, and every delivery key reaches the vendor once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_concurrency_slot_never_outlives_the_lease() {
    let s = TestServer::start_with(|c| {
        c.http.request_timeout_ms = 1_000;
        c.engine.lease_seconds = 3;
        c.providers
            .get_mut("twilio")
            .expect("twilio")
            .max_concurrency = Some(1);
        one_vendor_per_delivery(c);
    })
    .await;
    s.fault(
        "twilio",
        herald_sim::Fault {
            latency_min_ms: 250,
            latency_max_ms: 300,
            ..herald_sim::Fault::default()
        },
    );
    let mut accepted = Vec::new();
    for i in 0..24 {
        let phone = format!("+1415666{i:04}");
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &json!({"priority": "normal", "channels": ["sms"],
                    "recipient": {"phone": phone}, "content": {"text": "hello"}}),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        accepted.push(phone);
    }
    // 24 calls of ~0.3 s one at a time: about 7 s of work, under 3 s leases.
    assert_each_sent_once(&s, &accepted).await;
}

/// Herald on the machine's PostgreSQL through `proxy_url`, with a short
/// store timeout.
fn on_postgres(c: &mut Config, url: &str) {
    c.store.kind = herald::config::StoreKind::Postgres;
    c.store.url = Secret::new(url);
    c.store.writers = 2;
    c.store.max_connections = 8;
    c.store.timeout_ms = 1_500;
}

async fn ready(s: &TestServer) -> (u16, serde_json::Value) {
    let resp = s
        .http
        .get(format!("{}/readyz", s.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/readyz answers within 5 s");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// A POST that must be answered (whatever the answer) well before the
/// server's own 30 s request timeout: the status, problem type and time.
async fn post_timed(s: &TestServer, body: &serde_json::Value) -> (u16, String, Duration) {
    let started = Instant::now();
    let resp = s
        .http
        .post(format!("{}/v1/notifications", s.base))
        .bearer_auth(&s.key)
        .json(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered within 10 s");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        v["type"].as_str().unwrap_or_default().to_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_writes_fail_fast_and_readiness_says_so() {
    let Some((proxy, url)) = crate::faults::postgres_behind_proxy("hs_outage_ready").await else {
        return;
    };
    let s = TestServer::start_with(|c| on_postgres(c, &url)).await;
    let sms = |i: u32| {
        json!({"channels": ["sms"], "recipient": {"phone": format!("+1415777{i:04}")},
            "content": {"text": "hello"}})
    };
    assert_eq!(post_timed(&s, &sms(0)).await.0, 202);
    assert_eq!(ready(&s).await.0, 200);

    for mode in [Mode::BlackHole, Mode::Refuse] {
        proxy.set(mode);
        // Each write is refused as unavailable within the store's timeout
        // (1.5 s), never held until the server's 30 s request timeout;
        // once the store is known to be failing, most at once.
        let mut slowest = Duration::ZERO;
        for i in 1..=8 {
            let (status, kind, took) = post_timed(&s, &sms(i)).await;
            assert_eq!(status, 503, "{mode:?}: {kind}");
            assert_eq!(kind, "urn:herald:problem:store-unavailable", "{mode:?}");
            slowest = slowest.max(took);
        }
        assert!(
            slowest < Duration::from_secs(4),
            "{mode:?}: a write took {slowest:?}"
        );
        let (status, body) = ready(&s).await;
        assert_eq!(status, 503, "{mode:?}: {body}");
        assert_ne!(body["store"], "ok", "{mode:?}: {body}");

        // Back: readiness turns by itself, and writes are taken.
        proxy.set(Mode::Pass);
        let back = wait_until_async(Duration::from_secs(15), || async {
            ready(&s).await.0 == 200
        })
        .await;
        assert!(back, "{mode:?}: not ready again after PostgreSQL came back");
        assert_eq!(post_timed(&s, &sms(100)).await.0, 202, "{mode:?}");
    }
}

/// Polls an async condition until it holds or `within` passes.
async fn wait_until_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The vendor answers while the store cannot write, and the store stays
/// away longer than the lease: the answer is held and written when the
/// store is back, and nothing is sent a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_lease_sends_nothing_twice() {
    let Some((proxy, url)) = crate::faults::postgres_behind_proxy("hs_outage_held").await else {
        return;
    };
    let s = TestServer::start_with(|c| {
        on_postgres(c, &url);
        c.http.request_timeout_ms = 2_000;
        c.engine.lease_seconds = 5;
        one_vendor_per_delivery(c);
    })
    .await;
    // Slow answers, so calls are in flight when the store goes.
    s.fault(
        "twilio",
        herald_sim::Fault {
            latency_min_ms: 1_200,
            latency_max_ms: 1_400,
            ..herald_sim::Fault::default()
        },
    );
    let (mut accepted, mut ids) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let phone = format!("+1415888{i:04}");
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &json!({"channels": ["sms"], "recipient": {"phone": phone},
                    "content": {"text": "hello"}}),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        accepted.push(phone);
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    // The calls are under way (each takes over a second); the store goes,
    // for longer than the lease, before they answer.
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.set(Mode::Pass);
    // Every notification ends sent, as the status API tells it.
    for id in &ids {
        let v = s.wait_finished(id).await;
        assert_eq!(v["channels"][0]["state"], "sent", "{v}");
    }
    assert_each_sent_once(&s, &accepted).await;
}

/// A small filesystem of the test's own (tmpfs), unmounted when dropped;
/// `None` (with a notice) where mounting is not allowed.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: the full-disk test (mounting a tmpfs needs root)"
            );
            return None;
        }
        Some(SmallDisk { path, _dir: dir })
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("create");
        let chunk = vec![0xa5u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// SQLite on a disk that fills up: writes are refused with 503 and the
/// node turns unready, so a load balancer stops sending it work; once
/// space is freed it is ready again and takes writes, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_node_unready_until_space_is_freed() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let data = disk.path.join("herald");
    let mut s = TestServer::start_with(|c| c.store.data_dir = data.clone()).await;
    let email = |i: u32| {
        json!({"channels": ["email"], "recipient": {"email": format!("u{i}@example.com")},
            "content": {"subject": "Your order", "text": "x".repeat(4_000)}})
    };
    assert_eq!(post_timed(&s, &email(0)).await.0, 202);
    assert_eq!(ready(&s).await.0, 200);

    let filler = disk.fill();
    let mut refused = None;
    for i in 1..3_000 {
        let (status, kind, _) = post_timed(&s, &email(i)).await;
        if status != 202 {
            refused = Some((status, kind));
            break;
        }
    }
    let (status, kind) = refused.expect("a write was refused once the disk was full");
    assert_eq!(status, 503, "{kind}");
    assert_eq!(kind, "urn:herald:problem:store-unavailable");
    let (status, body) = ready(&s).await;
    assert_eq!(status, 503, "a node that cannot write is not ready: {body}");

    std::fs::remove_file(&filler).expect("free the space");
    let back = wait_until_async(Duration::from_secs(15), || async {
        ready(&s).await.0 == 200
    })
    .await;
    assert!(back, "not ready again once space was freed");
    assert_eq!(post_timed(&s, &email(9_999)).await.0, 202);
    s.stop().await;
}

/// Requests that wait for a provider's only concurrency slot: each one's
/// `webhook-timestamp` and SigV4 date are made when it leaves, not when its
/// delivery began, so a backlog never sends a stale (refusable) request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_timestamps_are_made_when_the_request_leaves() {
    let s = TestServer::start_with(|c| {
        for name in ["webhook", "sns"] {
            c.providers.get_mut(name).expect("provider").max_concurrency = Some(1);
        }
        // SMS straight to SNS.
        c.channels
            .get_mut(&herald_core::model::Channel::Sms)
            .expect("sms")
            .providers = vec!["sns".into()];
    })
    .await;
    let slow = herald_sim::Fault {
        latency_min_ms: 400,
        latency_max_ms: 450,
        ..herald_sim::Fault::default()
    };
    s.fault("webhook", slow.clone());
    s.fault("sns", slow);
    for i in 0..8 {
        let hook = json!({"channels": ["webhook", "sms"],
            "recipient": {"webhook_url": format!("{}/hooks/t/{i}", s.sim_url),
                "phone": format!("+1415999{i:04}")},
            "content": {"text": "event"}});
        let (status, _, v) = s.post("/v1/notifications", &hook).await;
        assert_eq!(status, 202, "{v}");
    }
    s.wait_delivered(16, Duration::from_secs(30)).await;
    let entries = s.sim.entries();
    let waited = entries.iter().map(|e| e.received_at_ms).max().unwrap_or(0)
        - entries.iter().map(|e| e.received_at_ms).min().unwrap_or(0);
    assert!(
        waited >= 2_000,
        "the last requests waited for the slot: {waited} ms"
    );
    for e in &entries {
        let stamped = e.stamped_at_ms.expect("a timestamp");
        // Whole seconds on the wire: up to one second of rounding down.
        let age = e.received_at_ms - stamped;
        assert!(
            (0..1_500).contains(&age),
            "{} request stamped {age} ms before it arrived",
            e.vendor
        );
    }
}
