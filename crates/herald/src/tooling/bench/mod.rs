//! `herald bench`: the instrument behind Herald's headline figures. A load
//! generator posts realistic notifications to Herald's API; the vendor
//! simulator records what reached the vendors; the report matches the two
//! (lost, duplicated, accept-to-vendor latency per lane) and adds what the
//! Herald process used (CPU, peak RSS) and stored.
//!
//! By default it starts everything itself: the simulator in this process
//! and `herald serve` (the sandbox, on a fresh SQLite file) as a child, so
//! Herald's CPU and memory are measured apart from the load's. `--target`
//! points it at a Herald already running instead.

mod load;
pub mod process;
pub mod report;
mod vendors;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald_sim::{Fault, Sim};
use indicatif::{MultiProgress, ProgressBar};
use serde_json::json;

use crate::progress;
use load::{Client, Endpoint, LoadResult, Stream};
use process::{Herald, Usage};
use report::{deliveries, per_second, Machine, ProcessFigures, Report};
use vendors::Vendors;
use workload::{NEWSLETTER, TWO_FACTOR};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// The everyday mix at a fixed rate (or as fast as possible) for the duration.
    Steady,
    /// Low-lane newsletters as fast as Herald takes them, plus a trickle of
    /// critical 2FA SMS (through the single endpoint): critical latency under a flood.
    Flood,
    /// The everyday mix; the primary SMS vendor (Twilio) goes down for
    /// --outage-seconds a quarter of the way in, then comes back.
    Outage,
    /// The everyday mix; Herald is SIGKILLed halfway and restarted on the
    /// same data; the client resends what had no answer, with the same keys.
    Crash,
    /// --backlog newsletters while their vendor is down (a backlog of that
    /// many pending deliveries: Herald's memory with it), then the vendor
    /// comes back and the backlog drains.
    Backlog,
    /// The everyday mix offered at --rate (pass about three times what
    /// `steady` delivers) with admission control on: a lane-behind 429 is
    /// the item's answer (shed, counted per lane, not sent again), and the
    /// latencies are those of what was admitted.
    Overload,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "steady")]
    pub scenario: Scenario,
    /// How long to submit, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_seconds: u64,
    /// Notifications per second to submit; 0 for as fast as Herald takes
    /// them. (The flood's newsletters are always as fast as possible.)
    #[arg(long, default_value_t = 12_000)]
    pub rate: u64,
    #[arg(long, value_enum, default_value = "batch")]
    pub endpoint: Endpoint,
    /// Items per batch request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Concurrent API connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Vendor latency, uniform between the two (milliseconds).
    #[arg(long, default_value = "20-80", value_parser = parse_range)]
    pub vendor_latency_ms: (u64, u64),
    /// Critical 2FA SMS per second during a flood.
    #[arg(long, default_value_t = 50)]
    pub critical_rate: u64,
    /// How long the outage lasts.
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
    /// Pending deliveries to build up in the backlog scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// How long to wait, after submitting, for every delivery to arrive.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout_seconds: u64,
    /// Seconds to measure the simulator alone first (0 to skip).
    #[arg(long, default_value_t = 5)]
    pub sim_ceiling_seconds: u64,
    /// Also write the report as JSON (with a per-second timeline) to this
    /// file. Without it, only the table is printed.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// A running Herald to load instead of starting one (its base URL).
    #[arg(long, requires_all = ["api_key", "sim_url"])]
    pub target: Option<String>,
    /// The API key for --target.
    #[arg(long, env = "HERALD_API_KEY")]
    pub api_key: Option<String>,
    /// The simulator --target sends to (`herald sim`); needed to see deliveries.
    #[arg(long)]
    pub sim_url: Option<String>,
    /// The --target's process id, to report its CPU and memory.
    #[arg(long)]
    pub herald_pid: Option<u32>,
    /// Herald's data directory: where the started Herald keeps its database
    /// (a temporary directory by default), or --target's, to report bytes stored.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Addresses to put on the suppression list before the run (none a
    /// workload sends to): what the check on the delivery path costs with
    /// a list that size.
    #[arg(long, default_value_t = 0)]
    pub suppressed: u64,
    /// Recipients to store before the run (`r0` to `rN-1`, each with every
    /// address its number's notifications go to); notifications numbered
    /// below N are then addressed by `recipient.id` alone. Needs the bench
    /// to start Herald (no --target).
    #[arg(long, default_value_t = 0, conflicts_with = "target")]
    pub recipients: u64,
    /// With --recipients: give every stored recipient quiet hours (never in
    /// force during the run) and the tenant a frequency cap on every
    /// workload category (never reached), so each check runs and holds
    /// nothing back: what the checks cost.
    #[arg(long, requires = "recipients")]
    pub rules: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u64, u64) = (
        a.trim()
            .parse()
            .map_err(|_| format!("{a:?} is not a number of milliseconds"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("{b:?} is not a number of milliseconds"))?,
    );
    if a > b {
        return Err(format!("{a} is more than {b}"));
    }
    Ok((a, b))
}

/// Everything under test: Herald (started here or not), the vendors, a client.
struct Rig {
    herald: Option<Herald>,
    pid: Option<u32>,
    vendors: Vendors,
    client: Client,
    data_dir: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
    _sim_task: Option<tokio::task::JoinHandle<()>>,
}

impl Rig {
    async fn start(args: &BenchArgs) -> anyhow::Result<Rig> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections.max(2) * 2)
            .timeout(Duration::from_secs(60))
            .build()?;
        if let Some(target) = &args.target {
            if args.scenario == Scenario::Crash {
                bail!("the crash scenario kills and restarts Herald, so it starts its own: drop --target");
            }
            let sim_url = args
                .sim_url
                .clone()
                .context("--sim-url is required with --target")?;
            return Ok(Rig {
                herald: None,
                pid: args.herald_pid,
                vendors: Vendors::Remote {
                    url: sim_url.trim_end_matches('/').to_owned(),
                    http: http.clone(),
                },
                client: Client {
                    http,
                    base: target.trim_end_matches('/').to_owned(),
                    key: args
                        .api_key
                        .clone()
                        .context("--api-key is required with --target")?,
                    hooks: sim_url.trim_end_matches('/').to_owned(),
                    by_id_below: 0,
                },
                data_dir: args.data_dir.clone(),
                _tmp: None,
                _sim_task: None,
            });
        }
        let sim = Sim::new(Some(args.seed));
        let (sim_addr, sim_task) = sim.start("127.0.0.1:0".parse()?).await?;
        let sim_url = format!("http://{sim_addr}");
        let tmp = tempfile::tempdir()?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().to_path_buf());
        std::fs::create_dir_all(&data_dir)?;
        let key = crate::api::generate_key();
        let bin = std::env::current_exe().context("finding the herald binary")?;
        // The overload scenario is about admission control: it is on there.
        let env: &[(&str, &str)] = if args.scenario == Scenario::Overload {
            &[("HERALD__SERVER__ADMISSION", "true")]
        } else {
            &[]
        };
        if args.recipients > 0 {
            store_recipients(&data_dir, &key, args.recipients, &sim_url, args.rules).await?;
        }
        let herald = Herald::start(&bin, &data_dir, &sim_url, &key, env).await?;
        Ok(Rig {
            pid: herald.pid(),
            client: Client {
                http,
                base: herald.base.clone(),
                key,
                hooks: sim_url,
                by_id_below: args.recipients,
            },
            herald: Some(herald),
            vendors: Vendors::Local(sim),
            data_dir: Some(data_dir),
            _tmp: Some(tmp),
            _sim_task: Some(sim_task),
        })
    }

    fn herald_usage(&self) -> Option<Usage> {
        match &self.herald {
            Some(h) => h.usage(),
            None => self.pid.and_then(process::usage),
        }
    }
}

/// Stores `n` recipients (`workload::profile`) for the sandbox tenant
/// that `key` will belong to, in the store Herald is about to open, a
/// thousand per write.
async fn store_recipients(
    data_dir: &std::path::Path,
    key: &str,
    n: u64,
    hooks: &str,
    rules: bool,
) -> anyhow::Result<()> {
    let mut cfg = crate::config::Config::load(None)?;
    cfg.store.data_dir = data_dir.to_path_buf();
    let store = crate::app::open_store(&cfg).await?;
    let tenant = crate::app::add_key(
        store.as_ref(),
        crate::app::SANDBOX_TENANT,
        key,
        "bench",
        herald_core::store::Scopes::ALL,
    )
    .await?;
    // Quiet hours in the profiles' zone (Europe/Lisbon) starting six hours
    // from now, an hour long: checked for every delivery, in force for none.
    let quiet = rules.then(|| {
        let at = |h: i64| {
            (chrono::Utc::now() + chrono::Duration::hours(h))
                .with_timezone(&chrono_tz::Europe::Lisbon)
                .format("%H:%M")
                .to_string()
        };
        serde_json::json!({"start": at(6), "end": at(7)})
    });
    if rules {
        let caps: serde_json::Map<String, serde_json::Value> = workload::CATEGORIES
            .iter()
            .map(|c| {
                (
                    (*c).to_owned(),
                    serde_json::json!({"max": 1_000_000, "per_seconds": 86_400}),
                )
            })
            .collect();
        let prefs = serde_json::from_value(serde_json::json!({"caps": caps}))?;
        store.set_tenant_preferences(&tenant, prefs).await?;
    }
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch = (i..n.min(i + 1_000))
            .map(|m| {
                let mut p = workload::profile(m, hooks);
                if let Some(q) = &quiet {
                    p["quiet_hours"] = q.clone();
                }
                let profile = serde_json::from_value(p)?;
                Ok((workload::recipient_id(m), profile))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        i += batch.len() as u64;
        store
            .put_recipients(&tenant, batch, herald_core::now_ms())
            .await?;
    }
    eprintln!(
        "recipients: {n} stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the scenario and reports; `Ok(false)` when anything was lost,
/// duplicated or refused.
pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    // Ctrl-C ends the run by returning, so the rig is dropped and its child
    // Herald killed (`kill_on_drop`), rather than left running.
    tokio::select! {
        finished = run_scenario(args) => finished,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the Herald under test was stopped"),
    }
}

async fn run_scenario(args: BenchArgs) -> anyhow::Result<bool> {
    let mut rig = Rig::start(&args).await?;
    let mp = if args.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    eprintln!(
        "herald bench {:?}: Herald at {}, vendors at {}",
        args.scenario, rig.client.base, rig.client.hooks
    );

    let ceiling = if args.sim_ceiling_seconds > 0 {
        let c = simulator_ceiling(&rig, &args).await?;
        eprintln!("simulator alone: {c:.0} requests/s");
        Some(c)
    } else {
        None
    };
    if args.suppressed > 0 {
        let bar = progress::bar(&mp, args.suppressed, "suppressed", args.quiet);
        let listing = Instant::now();
        rig.client.suppress(args.suppressed, &bar).await?;
        eprintln!(
            "suppression list: {} addresses in {:.1} s",
            args.suppressed,
            listing.elapsed().as_secs_f64()
        );
    }
    rig.vendors.reset().await?;
    let (lo, hi) = args.vendor_latency_ms;
    let latency = Fault {
        latency_min_ms: lo,
        latency_max_ms: hi,
        ..Fault::default()
    };
    for v in herald_sim::VENDORS {
        rig.vendors.set_fault(v, latency.clone()).await?;
    }

    let herald_before = rig.herald_usage();
    let own_before = process::own_usage();
    let started = Instant::now();
    let start_ms = herald_core::now_ms();
    let until = started + Duration::from_secs(args.duration_seconds);
    let expected = match args.scenario {
        Scenario::Backlog => args.backlog,
        Scenario::Flood => 0,
        _ => args.rate * args.duration_seconds,
    };
    let accepted_bar = progress::bar(&mp, expected, "accepted", args.quiet);
    let delivered_bar = progress::bar(&mp, expected, "delivered", args.quiet);
    let watcher = watch_deliveries(&rig.vendors, delivered_bar.clone());

    let mixed = |rate, first| Stream {
        name: "mixed",
        kind_of: workload::mixed,
        seed: args.seed,
        first,
        rate,
        until,
        count: None,
        endpoint: args.endpoint,
        batch_size: args.batch_size,
        connections: args.connections,
        shed_is_final: args.scenario == Scenario::Overload,
    };
    let mut figures = std::collections::BTreeMap::new();
    let outcome: LoadResult = match args.scenario {
        Scenario::Steady => {
            mixed(args.rate, 0)
                .run(rig.client.clone(), accepted_bar.clone())
                .await?
        }
        Scenario::Overload => {
            let out = mixed(args.rate, 0)
                .run(rig.client.clone(), accepted_bar.clone())
                .await?;
            let mut admitted: std::collections::BTreeMap<&str, u64> = Default::default();
            let mut shed: std::collections::BTreeMap<&str, u64> = Default::default();
            for a in &out.accepted {
                *admitted.entry(a.kind.lane.as_str()).or_default() += 1;
            }
            for (_, kind) in &out.shed {
                *shed.entry(kind.lane.as_str()).or_default() += 1;
            }
            figures.insert("admitted by lane".to_owned(), json!(admitted));
            figures.insert("shed by lane".to_owned(), json!(shed));
            out
        }
        Scenario::Flood => {
            let flood = Stream {
                name: "newsletters",
                kind_of: |_, _| NEWSLETTER,
                rate: 0,
                ..mixed(0, 0)
            };
            let trickle = Stream {
                name: "2fa",
                kind_of: |_, _| TWO_FACTOR,
                rate: args.critical_rate,
                first: TRICKLE_BASE,
                endpoint: Endpoint::Single,
                connections: 4,
                ..mixed(0, 0)
            };
            let (a, b) = tokio::join!(
                flood.run(rig.client.clone(), accepted_bar.clone()),
                trickle.run(rig.client.clone(), ProgressBar::hidden())
            );
            let mut both = a?;
            both.absorb(b?);
            both
        }
        Scenario::Outage => {
            let vendors = &rig.vendors;
            let outage = async {
                tokio::time::sleep(Duration::from_secs(args.duration_seconds) / 4).await;
                let down = Fault {
                    outage: true,
                    ..latency.clone()
                };
                vendors.set_fault("twilio", down).await?;
                let at = started.elapsed();
                mp.println(format!("twilio down at {:.1} s", at.as_secs_f64()))
                    .ok();
                tokio::time::sleep(Duration::from_secs(args.outage_seconds)).await;
                vendors.set_fault("twilio", latency.clone()).await?;
                mp.println(format!(
                    "twilio back at {:.1} s",
                    started.elapsed().as_secs_f64()
                ))
                .ok();
                anyhow::Ok(at)
            };
            let (out, at) = tokio::join!(
                mixed(args.rate, 0).run(rig.client.clone(), accepted_bar.clone()),
                outage
            );
            figures.insert(
                "twilio down".to_owned(),
                json!(format!(
                    "from {:.1} s for {} s",
                    at?.as_secs_f64(),
                    args.outage_seconds
                )),
            );
            out?
        }
        Scenario::Crash => {
            let herald = rig
                .herald
                .as_mut()
                .context("the crash scenario starts its own Herald")?;
            let crash = async {
                tokio::time::sleep(Duration::from_secs(args.duration_seconds) / 2).await;
                let at = started.elapsed();
                let restart = herald.crash_and_restart().await?;
                mp.println(format!(
                    "SIGKILLed at {:.1} s; listening again {:.1} s later",
                    at.as_secs_f64(),
                    restart.as_secs_f64()
                ))
                .ok();
                anyhow::Ok((at, restart))
            };
            let (out, crash) = tokio::join!(
                mixed(args.rate, 0).run(rig.client.clone(), accepted_bar.clone()),
                crash
            );
            let (at, restart) = crash?;
            figures.insert(
                "crash".to_owned(),
                json!(format!(
                    "SIGKILL at {:.1} s, restarted in {:.1} s",
                    at.as_secs_f64(),
                    restart.as_secs_f64()
                )),
            );
            out?
        }
        Scenario::Backlog => {
            let down = Fault {
                outage: true,
                ..latency.clone()
            };
            rig.vendors.set_fault("sendgrid", down).await?;
            let fill = Stream {
                name: "backlog",
                kind_of: |_, _| NEWSLETTER,
                rate: 0,
                count: Some(args.backlog),
                until: started + Duration::from_secs(24 * 3600),
                ..mixed(0, 0)
            };
            let out = fill.run(rig.client.clone(), accepted_bar.clone()).await?;
            let pending = out.accepted.len() as u64 - rig.vendors.delivered().await?;
            let at_peak = rig.herald_usage();
            rig.vendors.set_fault("sendgrid", latency.clone()).await?;
            figures.insert("pending".to_owned(), json!(pending));
            if let Some(u) = at_peak {
                figures.insert(
                    "rss at backlog".to_owned(),
                    json!(format!(
                        "{:.0} MiB now, {:.0} MiB peak",
                        mib(u.rss_bytes),
                        mib(u.peak_rss_bytes)
                    )),
                );
            }
            out
        }
    };
    let submit_seconds = outcome
        .finished
        .zip(outcome.started)
        .map_or(0.0, |(f, s)| (f - s).as_secs_f64());
    accepted_bar.abandon_with_message(format!("in {submit_seconds:.1} s"));

    // Wait for every acknowledged notification to reach its vendor.
    let want = outcome
        .accepted
        .iter()
        .map(|a| a.n)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    delivered_bar.set_length(want);
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout_seconds);
    while rig.vendors.delivered().await? < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more, so a late duplicate would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let herald_after = rig.herald_usage();
    let own_after = process::own_usage();
    let receipts = rig.vendors.receipts().await?;
    let d = deliveries(&outcome.accepted, &receipts, start_ms);
    delivered_bar.set_position(d.delivered);
    delivered_bar.abandon_with_message(format!(
        "by {:.1} s",
        (d.last_ms - start_ms) as f64 / 1000.0
    ));
    for (vendor, n) in &d.by_vendor {
        figures.insert(format!("via {vendor}"), json!(n));
    }
    if args.scenario == Scenario::Overload {
        // What the vendors received while the load lasted, not after.
        let during: u64 = d
            .timeline
            .iter()
            .filter(|s| s.second < args.duration_seconds)
            .map(|s| s.delivered)
            .sum();
        let per_second = during as f64 / args.duration_seconds.max(1) as f64;
        figures.insert(
            "delivered/s while offered".to_owned(),
            json!(per_second.round()),
        );
    }

    let finished_seconds = (d.last_ms - start_ms) as f64 / 1000.0;
    let wall = started.elapsed();
    let bytes = rig.data_dir.as_deref().map(process::bytes_on_disk);
    let report = Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        herald_version: env!("CARGO_PKG_VERSION"),
        machine: Machine::read(),
        settings: json!({
            "duration_seconds": args.duration_seconds,
            "rate": args.rate,
            "endpoint": args.endpoint,
            "batch_size": args.batch_size,
            "connections": args.connections,
            "vendor_latency_ms": [lo, hi],
            "critical_rate": args.critical_rate,
            "outage_seconds": args.outage_seconds,
            "backlog": args.backlog,
            "seed": args.seed,
            "herald": if rig.herald.is_some() { "started by the bench (sandbox, SQLite)" } else { "--target" },
            "simulator": if matches!(rig.vendors, Vendors::Local(_)) { "in-process" } else { "remote" },
        }),
        accepted: want,
        refused: outcome.refused.len() as u64,
        resent_requests: outcome.resent,
        submit_seconds,
        accepted_per_second: per_second(want, submit_seconds),
        delivered: d.delivered,
        finished_seconds,
        delivered_per_second: per_second(d.delivered, finished_seconds),
        channels: d.channels,
        accept_to_vendor_ms: d.lanes,
        api_request_ms: report::Latency::of(outcome.api_ms.iter().map(|&m| i64::from(m)).collect()),
        lost: d.lost,
        duplicated: d.duplicated,
        repeats_absorbed: d.repeats_absorbed,
        herald_process: figures_between(herald_before, herald_after, wall),
        bench_process: figures_between(own_before, own_after, wall),
        bytes_stored_per_notification: bytes
            .filter(|_| want > 0)
            .map(|b| (b as f64 / want as f64).round()),
        simulator_ceiling_per_second: ceiling,
        scenario_figures: figures,
        timeline: d.timeline,
    };
    if !outcome.refused.is_empty() {
        eprintln!(
            "refused, for example: {:?}",
            &outcome.refused[..outcome.refused.len().min(3)]
        );
    }
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    if let Some(h) = rig.herald.take() {
        h.stop().await?;
    }
    Ok(report.ok())
}

/// The flood's 2FA codes are numbered from here, apart from the newsletters.
const TRICKLE_BASE: u64 = 9_000_000_000;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn figures_between(
    before: Option<Usage>,
    after: Option<Usage>,
    wall: Duration,
) -> Option<ProcessFigures> {
    let (b, a) = (before?, after?);
    let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
    Some(ProcessFigures {
        cpu_seconds: (cpu * 10.0).round() / 10.0,
        cpu_percent: (cpu / wall.as_secs_f64().max(0.001) * 100.0).round(),
        peak_rss_mib: mib(a.peak_rss_bytes).round(),
    })
}

/// Keeps the delivered bar moving while the run goes on.
fn watch_deliveries(vendors: &Vendors, bar: ProgressBar) -> tokio::task::JoinHandle<()> {
    let vendors = vendors.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(n) = vendors.delivered().await {
                bar.set_position(n);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Requests per second the simulator answers on its own (no latency, no
/// Herald): webhook posts from this process over `--connections` × 4
/// connections. Its receipts are cleared afterwards.
async fn simulator_ceiling(rig: &Rig, args: &BenchArgs) -> anyhow::Result<f64> {
    rig.vendors.reset().await?;
    let url = format!("{}/hooks/ceiling", rig.client.hooks);
    let until = Instant::now() + Duration::from_secs(args.sim_ceiling_seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.connections.max(1) * 4 {
        let (http, url) = (rig.client.http.clone(), url.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let resp = http
                    .post(&url)
                    .header("webhook-id", format!("ceiling-{c}-{n}"))
                    .header("webhook-timestamp", "0")
                    .header("webhook-signature", "v1,none")
                    .header("content-type", "application/json")
                    .body(r#"{"type":"bench.ceiling","data":{"text":"ceiling"}}"#)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "the simulator answered {}",
                    resp.status()
                );
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    rig.vendors.reset().await?;
    Ok(rate.round())
}
