//! `herald demo`: a showcase workload through a sandbox started in-process —
//! the real HTTP API, a real SQLite file, the engine, and the vendor
//! simulator with realistic latency and a little trouble — then a report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_core::model::{Channel, DeliveryState, Priority};
use herald_sim::{Fault, Sim};

use indicatif::MultiProgress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::app::Running;
use crate::config::Config;
use crate::progress::bar;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How many notifications to send.
    #[arg(long, default_value_t = 20_000)]
    pub notifications: usize,
    /// Seed for the workload and the simulator's faults.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the database here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 50)]
    pub timeout_seconds: u64,
    /// No progress bars (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

const BATCH: usize = 100;
/// How long Twilio is down at the start of the run.
const TWILIO_OUTAGE: Duration = Duration::from_millis(1_000);
const CONCURRENT_REQUESTS: usize = 8;

/// One generated notification and how many deliveries it should make.
struct Planned {
    body: serde_json::Value,
    deliveries: usize,
    /// Deliveries the simulator will refuse on purpose (known-bad recipients).
    doomed: usize,
}

fn workload(n: usize, seed: u64, hook_base: &str) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let roll: f64 = rng.gen();
            let user = format!("user-{}", rng.gen_range(0..50_000));
            let phone = format!("+1415{:07}", rng.gen_range(0..10_000_000u32));
            // About one in 200 recipients is known bad: a failed delivery,
            // reported as failed and not as lost.
            let bad = rng.gen_ratio(1, 200);
            if roll < 0.15 {
                let to = if bad { "+15005550001".to_owned() } else { phone };
                Planned {
                    body: json!({"priority": "critical", "category": "2fa", "channels": ["sms"],
                        "recipient": {"id": user, "phone": to},
                        "template": {"id": "otp", "data": {"code": format!("{:06}", rng.gen_range(0..1_000_000))}},
                        "ttl_seconds": 300}),
                    deliveries: 1,
                    doomed: usize::from(bad),
                }
            } else if roll < 0.30 {
                let email = if bad { format!("{user}@invalid.example") } else { format!("{user}@example.com") };
                let locale = if rng.gen_ratio(1, 4) { "pt-BR" } else { "en" };
                Planned {
                    body: json!({"priority": "high", "category": "password-reset", "channels": ["email"],
                        "recipient": {"id": user, "email": email},
                        "template": {"id": "password-reset", "locale": locale,
                            "data": {"name": "Zoë", "link": format!("https://app.example.com/reset/{i}")}}}),
                    deliveries: 1,
                    doomed: usize::from(bad),
                }
            } else if roll < 0.60 {
                let devices = rng.gen_range(1..=2);
                let tokens: Vec<_> = (0..devices)
                    .map(|d| json!({"platform": if d == 0 { "android" } else { "ios" }, "token": format!("tok-{user}-{d}")}))
                    .collect();
                let with_hook = rng.gen_ratio(1, 5);
                let mut channels = vec!["push"];
                let mut recipient = json!({"id": user, "push_tokens": tokens});
                if with_hook {
                    channels.push("webhook");
                    recipient["webhook_url"] = json!(format!("{hook_base}/hooks/orders"));
                }
                // Now and then the shop's team hears of it in Slack too.
                let with_chat = rng.gen_ratio(1, 20);
                if with_chat {
                    channels.push("chat");
                    recipient["chat"] = json!("C0ORDERS1");
                }
                Planned {
                    body: json!({"priority": "normal", "category": "order-update", "channels": channels,
                        "recipient": recipient,
                        "template": {"id": "order-update", "data": {"order_id": format!("A-{i}"), "status": "shipped"}},
                        "metadata": {"order_id": format!("A-{i}")}}),
                    deliveries: devices + usize::from(with_hook) + usize::from(with_chat),
                    doomed: 0,
                }
            } else {
                let with_push = rng.gen_ratio(1, 10);
                let mut channels = vec!["email"];
                let mut recipient = json!({"id": user, "email": format!("{user}@example.com")});
                if with_push {
                    channels.push("push");
                    recipient["push_tokens"] = json!([{"platform": "web", "token": format!("web-{user}")}]);
                }
                Planned {
                    body: json!({"priority": "low", "category": "newsletter", "channels": channels,
                        "recipient": recipient,
                        "content": {"subject": "This week at Example — nouveautés 🎉",
                            "text": "Our favourite things this week.", "html": "<h1>This week</h1>"}}),
                    deliveries: 1 + usize::from(with_push),
                    doomed: 0,
                }
            }
        })
        .collect()
}

/// Runs the demo; `Ok(false)` when something was lost or duplicated.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());

    let sim = Sim::new(Some(args.seed));
    let (sim_addr, _sim_task) = sim.start("127.0.0.1:0".parse()?).await?;
    let sim_url = format!("http://{sim_addr}");
    // Vendors take 5-40 ms; Twilio fails 2% of requests with a 503 and
    // throttles 1% (retried); FCM fails 1% (retried).
    for v in herald_sim::VENDORS {
        sim.set_fault(
            v,
            Fault {
                latency_min_ms: 5,
                latency_max_ms: 40,
                ..Fault::default()
            },
        )
        .map_err(anyhow::Error::msg)?;
    }
    let twilio = Fault {
        latency_min_ms: 10,
        latency_max_ms: 60,
        error_rate: 0.02,
        rate_limit_rate: 0.01,
        retry_after_s: Some(1),
        ..Fault::default()
    };
    // Twilio starts with an outage: its circuit opens, critical SMS fail
    // over to SNS at once, and once Twilio is back a probe closes it.
    sim.set_fault(
        "twilio",
        Fault {
            outage: true,
            ..twilio.clone()
        },
    )
    .map_err(anyhow::Error::msg)?;
    sim.set_fault(
        "fcm",
        Fault {
            latency_min_ms: 5,
            latency_max_ms: 40,
            error_rate: 0.01,
            ..Fault::default()
        },
    )
    .map_err(anyhow::Error::msg)?;

    let mut cfg = Config::load(None)?.into_sandbox(&sim_url);
    cfg.store.data_dir = data_dir.clone();
    for lane in cfg.lanes.all_mut() {
        lane.retry_base_ms = 200;
        lane.retry_cap_ms = 2_000;
    }
    if let Some(t) = cfg.providers.get_mut("twilio") {
        t.circuit_open_ms = Some(TWILIO_OUTAGE.as_millis() as u64 / 2);
    }
    let key = crate::api::generate_key();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let herald = Running::start(cfg, listener, Some(&key)).await?;
    let base = format!("http://{}", herald.addr);

    let plan = workload(args.notifications, args.seed, &sim_url);
    let expected: usize = plan.iter().map(|p| p.deliveries).sum();
    let doomed: usize = plan.iter().map(|p| p.doomed).sum();
    println!(
        "Herald demo: {} notifications ({} deliveries) through {base}, vendors simulated at {sim_url}",
        plan.len(),
        expected
    );

    let mp = MultiProgress::new();
    let accepted_bar = bar(&mp, plan.len() as u64, "accepted", args.quiet);
    let delivered_bar = bar(&mp, expected as u64, "delivered", args.quiet);
    let started = Instant::now();
    let recovery = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TWILIO_OUTAGE).await;
            sim.set_fault("twilio", twilio)
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENT_REQUESTS)
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut expected_accepted = 0usize;
    // Each batch with the number of deliveries each of its items makes.
    let chunks: Vec<(Vec<serde_json::Value>, Vec<usize>)> = plan
        .chunks(BATCH)
        .map(|c| {
            (
                c.iter().map(|p| p.body.clone()).collect(),
                c.iter().map(|p| p.deliveries).collect(),
            )
        })
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REQUESTS));
    let mut sends = tokio::task::JoinSet::new();
    for (items, deliveries) in chunks {
        let permit = sem.clone().acquire_owned().await?;
        let (client, url, key) = (
            client.clone(),
            format!("{base}/v1/notifications/batch"),
            key.clone(),
        );
        let (accepted, refused, bar) = (accepted.clone(), refused.clone(), accepted_bar.clone());
        sends.spawn(async move {
            let _permit = permit;
            // Items admission control refused (their lane is behind: a 429
            // `lane-behind`, nothing stored) are sent again after a pause,
            // as a client honouring Retry-After would.
            let mut pending: Vec<(serde_json::Value, usize)> =
                items.into_iter().zip(deliveries).collect();
            let mut expected = 0;
            for round in 0.. {
                let body_items: Vec<&serde_json::Value> = pending.iter().map(|(b, _)| b).collect();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"notifications": body_items}))
                    .send()
                    .await
                    .context("POST /v1/notifications/batch")?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.context("batch response")?;
                anyhow::ensure!(status.is_success(), "batch refused: {status} {body}");
                let results = body["results"].as_array().cloned().unwrap_or_default();
                anyhow::ensure!(
                    results.len() == pending.len(),
                    "one result per item: {body}"
                );
                let mut again = Vec::new();
                for (r, (item, d)) in results.iter().zip(pending) {
                    if r["status"] == "accepted" {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        bar.inc(1);
                        expected += d;
                    } else if r["error"]["type"] == "urn:herald:problem:lane-behind" && round < 60 {
                        again.push((item, d));
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        bar.inc(1);
                    }
                }
                if again.is_empty() {
                    break;
                }
                pending = again;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::Ok(expected)
        });
    }
    while let Some(r) = sends.join_next().await {
        expected_accepted += r??;
    }
    accepted_bar.finish_with_message(format!("in {:.1}s", started.elapsed().as_secs_f64()));
    let accept_secs = started.elapsed().as_secs_f64();

    // Wait until every accepted delivery has reached the simulator or failed.
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    loop {
        let unique: u64 = sim.stats().values().map(|s| s.unique).sum();
        delivered_bar.set_position(unique);
        let pending: u64 = herald
            .store
            .queue_depths()
            .await?
            .iter()
            .map(|d| d.pending)
            .sum();
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    // Not `finish`: that would fill the bar, and deliveries that failed for
    // good (or were lost) must not look delivered.
    delivered_bar.set_position(sim.stats().values().map(|s| s.unique).sum());
    delivered_bar.abandon_with_message(format!("in {total_secs:.1}s"));
    recovery.await?.map_err(anyhow::Error::msg)?;
    let twilio_circuit = client
        .get(format!("{base}/v1/providers"))
        .bearer_auth(&key)
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "twilio"))
        .map(|p| p["circuit"]["state"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "?".into());
    let summaries = herald.reports.delivery_summaries().await?;
    herald.shutdown().await;

    let ok = report(
        &sim,
        &summaries,
        Totals {
            notifications: plan.len(),
            accepted: accepted.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            expected_deliveries: expected_accepted,
            doomed,
            accept_secs,
            total_secs,
            twilio_circuit,
        },
    );
    Ok(ok)
}

struct Totals {
    notifications: usize,
    accepted: u64,
    refused: u64,
    expected_deliveries: usize,
    doomed: usize,
    accept_secs: f64,
    total_secs: f64,
    /// Twilio's circuit at the end (after its outage at the start).
    twilio_circuit: String,
}

fn percentile(sorted: &[i64], p: f64) -> String {
    crate::tooling::bench::report::nearest_rank(sorted, p)
        .map_or_else(|| "-".into(), |v| format!("{v} ms"))
}

fn report(sim: &Sim, summaries: &[herald_core::store::DeliverySummary], t: Totals) -> bool {
    #[derive(Default)]
    struct Row {
        sent: usize,
        failed: usize,
        other: usize,
        latencies: Vec<i64>,
    }
    let mut rows: BTreeMap<(Channel, String), Row> = BTreeMap::new();
    let mut lanes: BTreeMap<Priority, Vec<i64>> = BTreeMap::new();
    for s in summaries {
        let row = rows
            .entry((s.channel, s.provider.clone().unwrap_or_else(|| "-".into())))
            .or_default();
        match s.state {
            DeliveryState::Sent | DeliveryState::Delivered => {
                row.sent += 1;
                if let Some(at) = s.sent_at_ms {
                    row.latencies.push(at - s.accepted_at_ms);
                    lanes
                        .entry(s.priority)
                        .or_default()
                        .push(at - s.accepted_at_ms);
                }
            }
            DeliveryState::Failed => row.failed += 1,
            _ => row.other += 1,
        }
    }
    println!("\nPer channel and provider (latency: accepted by the API → accepted by the vendor)");
    println!(
        "{:<9} {:<10} {:>8} {:>7} {:>9} {:>10} {:>10}",
        "channel", "provider", "sent", "failed", "unfinished", "p50", "p99"
    );
    for ((ch, provider), row) in &mut rows {
        row.latencies.sort_unstable();
        println!(
            "{:<9} {:<10} {:>8} {:>7} {:>9} {:>10} {:>10}",
            ch.as_str(),
            provider,
            row.sent,
            row.failed,
            row.other,
            percentile(&row.latencies, 0.50),
            percentile(&row.latencies, 0.99)
        );
    }
    println!("\nPer lane");
    println!("{:<9} {:>8} {:>10} {:>10}", "lane", "sent", "p50", "p99");
    for (lane, lat) in &mut lanes {
        lat.sort_unstable();
        println!(
            "{:<9} {:>8} {:>10} {:>10}",
            lane.as_str(),
            lat.len(),
            percentile(lat, 0.5),
            percentile(lat, 0.99)
        );
    }

    let stats = sim.stats();
    println!("\nAt the simulated vendors");
    println!(
        "{:<9} {:>9} {:>9} {:>11} {:>8} {:>9}",
        "vendor", "requests", "unique", "duplicates", "faults", "rejected"
    );
    for (v, s) in &stats {
        println!(
            "{:<9} {:>9} {:>9} {:>11} {:>8} {:>9}",
            v, s.received, s.unique, s.duplicates, s.faulted, s.rejected
        );
    }
    let unique: u64 = stats.values().map(|s| s.unique).sum();
    let duplicates: u64 = stats.values().map(|s| s.duplicates).sum();
    let sent = summaries
        .iter()
        .filter(|s| s.state == DeliveryState::Sent)
        .count() as u64;
    let failed = summaries
        .iter()
        .filter(|s| s.state == DeliveryState::Failed)
        .count() as u64;
    // Lost: accepted deliveries that neither reached a vendor nor failed for
    // a reason the vendor gave.
    let lost = (t.expected_deliveries as u64).saturating_sub(unique + failed);
    println!("\nSummary");
    println!("  notifications sent to the API   {}", t.notifications);
    println!(
        "  accepted (202)                  {} ({} refused)",
        t.accepted, t.refused
    );
    println!(
        "  deliveries expected             {}",
        t.expected_deliveries
    );
    println!("  delivered (unique at vendors)   {unique}  (store says sent: {sent})");
    println!(
        "  failed (known-bad recipients)   {failed}  (planned: {})",
        t.doomed
    );
    let via_sns = summaries
        .iter()
        .filter(|d| d.state == DeliveryState::Sent && d.provider.as_deref() == Some("sns"))
        .count();
    println!(
        "  Twilio outage (first {:.1}s)     {via_sns} SMS failed over to SNS; Twilio's circuit now {}",
        TWILIO_OUTAGE.as_secs_f64(),
        t.twilio_circuit
    );
    println!("  duplicates seen by vendors      {duplicates}");
    println!("  lost                            {lost}");
    println!(
        "  time                            accepted in {:.1}s ({:.0}/s), all done in {:.1}s",
        t.accept_secs,
        t.accepted as f64 / t.accept_secs.max(0.001),
        t.total_secs
    );
    let ok = lost == 0 && duplicates == 0 && unique == sent && t.refused == 0;
    println!(
        "\n{}",
        if ok {
            "OK: nothing lost, nothing sent twice."
        } else {
            "FAILED: see the figures above."
        }
    );
    ok
}
