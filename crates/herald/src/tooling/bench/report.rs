//! The bench's figures: computed from what the load generator was told
//! (which notifications Herald acknowledged, and when) and what the
//! simulated vendors received (which, and when), then printed as a table
//! and written as JSON.

use std::collections::{BTreeMap, HashMap};

use herald_core::model::{Channel, Priority};
use serde::Serialize;

use super::load::Accepted;
use super::vendors::Receipt;
use super::workload::{channel_of, number_of};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub p999: i64,
    pub max: i64,
}

impl Latency {
    pub fn of(mut ms: Vec<i64>) -> Latency {
        ms.sort_unstable();
        let at = |p: f64| nearest_rank(&ms, p).unwrap_or(0);
        Latency {
            count: ms.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: ms.last().copied().unwrap_or(0),
        }
    }
}

/// The `p` quantile (0 to 1) of `sorted` by nearest rank; `None` when empty.
pub fn nearest_rank(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChannelFigures {
    pub accepted: u64,
    pub delivered: u64,
    /// Delivered over the time from the first acknowledgement to the
    /// channel's last delivery.
    pub delivered_per_second: f64,
}

/// CPU and memory of a process over the measured period.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    /// Of one core: 200 is both cores of this machine.
    pub cpu_percent: f64,
    pub peak_rss_mib: f64,
}

/// One second of the run: notifications acknowledged and delivered in it.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub accepted: u64,
    pub delivered: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub herald_version: &'static str,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub accepted: u64,
    /// Items Herald refused for good (none in a correct run).
    pub refused: u64,
    /// Requests sent again because they got no answer (or a retryable one).
    pub resent_requests: u64,
    pub submit_seconds: f64,
    pub accepted_per_second: f64,
    pub delivered: u64,
    /// From the start until the last delivery.
    pub finished_seconds: f64,
    pub delivered_per_second: f64,
    pub channels: BTreeMap<Channel, ChannelFigures>,
    /// Acknowledged by the API → received by the vendor, per lane.
    pub accept_to_vendor_ms: BTreeMap<Priority, Latency>,
    /// Round trips of the API requests themselves.
    pub api_request_ms: Latency,
    /// Accepted notifications no vendor received (by the end of the drain).
    pub lost: u64,
    /// Deliveries a vendor received more than once (by recipient, across
    /// vendors: a copy through the backup counts).
    pub duplicated: u64,
    /// Repeated requests a vendor dropped by their idempotency key.
    pub repeats_absorbed: u64,
    pub herald_process: Option<ProcessFigures>,
    /// The load generator (and the simulator, when the bench runs it).
    pub bench_process: Option<ProcessFigures>,
    pub bytes_stored_per_notification: Option<f64>,
    /// Requests per second the simulator took on its own, with no latency,
    /// from this process: the rig's ceiling.
    pub simulator_ceiling_per_second: Option<f64>,
    /// Figures particular to the scenario.
    pub scenario_figures: BTreeMap<String, serde_json::Value>,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The delivery figures: what reached the vendors against what was acknowledged.
pub struct Deliveries {
    pub channels: BTreeMap<Channel, ChannelFigures>,
    pub lanes: BTreeMap<Priority, Latency>,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub repeats_absorbed: u64,
    pub last_ms: i64,
    pub timeline: Vec<Second>,
    /// Deliveries per vendor.
    pub by_vendor: BTreeMap<String, u64>,
}

/// Matches receipts to acknowledged notifications. `start_ms` is when the
/// run began (the timeline's zero).
pub fn deliveries(accepted: &[Accepted], receipts: &[Receipt], start_ms: i64) -> Deliveries {
    // Each notification is acknowledged once in a run; a resubmission after a
    // crash may acknowledge it again: keep the first.
    let mut acked: HashMap<u64, &Accepted> = HashMap::with_capacity(accepted.len());
    for a in accepted {
        acked.entry(a.n).or_insert(a);
    }
    let mut received: HashMap<(u64, Channel), Vec<&Receipt>> =
        HashMap::with_capacity(receipts.len());
    let mut by_vendor = BTreeMap::new();
    let mut repeats_absorbed = 0;
    for r in receipts {
        let (Some(n), Some(ch)) = (number_of(&r.vendor, &r.recipient), channel_of(&r.vendor))
        else {
            continue;
        };
        repeats_absorbed += u64::from(r.requests.saturating_sub(1));
        *by_vendor.entry(r.vendor.clone()).or_insert(0) += 1;
        received.entry((n, ch)).or_default().push(r);
    }
    let mut channels: BTreeMap<Channel, ChannelFigures> = BTreeMap::new();
    let mut lanes: BTreeMap<Priority, Vec<i64>> = BTreeMap::new();
    let mut last_by_channel: BTreeMap<Channel, i64> = BTreeMap::new();
    let (mut delivered, mut lost, mut duplicated, mut last_ms) = (0, 0, 0, start_ms);
    let mut timeline: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let second = |ms: i64| u64::try_from(ms - start_ms).unwrap_or(0) / 1000;
    for a in acked.values() {
        let ch = a.kind.channel;
        channels.entry(ch).or_default().accepted += 1;
        timeline.entry(second(a.at_ms)).or_default().0 += 1;
        let Some(got) = received.get(&(a.n, ch)) else {
            lost += 1;
            continue;
        };
        duplicated += got.len() as u64 - 1;
        let first = got
            .iter()
            .map(|r| r.received_at_ms)
            .min()
            .unwrap_or(a.at_ms);
        delivered += 1;
        channels.entry(ch).or_default().delivered += 1;
        timeline.entry(second(first)).or_default().1 += 1;
        // The vendor may get a message before the client has read its 202.
        lanes
            .entry(a.kind.lane)
            .or_default()
            .push((first - a.at_ms).max(0));
        last_ms = last_ms.max(first);
        let l = last_by_channel.entry(ch).or_insert(first);
        *l = (*l).max(first);
    }
    let first_ack = acked.values().map(|a| a.at_ms).min().unwrap_or(start_ms);
    for (ch, fig) in &mut channels {
        let span = last_by_channel.get(ch).map_or(0, |l| l - first_ack);
        fig.delivered_per_second = per_second(fig.delivered, span as f64 / 1000.0);
    }
    let end = timeline.keys().last().copied().unwrap_or(0);
    Deliveries {
        channels,
        lanes: lanes
            .into_iter()
            .map(|(l, v)| (l, Latency::of(v)))
            .collect(),
        delivered,
        lost,
        duplicated,
        repeats_absorbed,
        last_ms,
        timeline: (0..=end)
            .map(|s| {
                let (accepted, delivered) = timeline.get(&s).copied().unwrap_or_default();
                Second {
                    second: s,
                    accepted,
                    delivered,
                }
            })
            .collect(),
        by_vendor,
    }
}

pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        (count as f64 / seconds).round()
    }
}

impl Report {
    /// Whether the run kept its promise: nothing lost, nothing doubled,
    /// nothing refused.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.refused == 0
    }

    pub fn print(&self) {
        println!(
            "\nherald bench {} — {} cores, {} GiB",
            self.scenario, self.machine.cores, self.machine.memory_gib
        );
        println!(
            "  accepted        {:>9} in {:.1} s = {:.0}/s{}",
            self.accepted,
            self.submit_seconds,
            self.accepted_per_second,
            if self.resent_requests > 0 {
                format!("  ({} requests resent)", self.resent_requests)
            } else {
                String::new()
            }
        );
        println!(
            "  delivered       {:>9} by {:.1} s = {:.0}/s",
            self.delivered, self.finished_seconds, self.delivered_per_second
        );
        println!(
            "\n  {:<9} {:>9} {:>9} {:>12}",
            "channel", "accepted", "delivered", "delivered/s"
        );
        for (ch, f) in &self.channels {
            println!(
                "  {:<9} {:>9} {:>9} {:>12.0}",
                ch.as_str(),
                f.accepted,
                f.delivered,
                f.delivered_per_second
            );
        }
        println!(
            "\n  accept → vendor (ms)\n  {:<9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "lane", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |name: &str, l: &Latency| {
            println!(
                "  {:<9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
                name, l.count, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        for (lane, l) in &self.accept_to_vendor_ms {
            row(lane.as_str(), l);
        }
        row("(API)", &self.api_request_ms);
        println!();
        println!("  lost            {:>9}", self.lost);
        println!("  duplicated      {:>9}", self.duplicated);
        println!("  refused         {:>9}", self.refused);
        println!("  repeats dropped by vendor keys {}", self.repeats_absorbed);
        if let Some(p) = &self.herald_process {
            println!(
                "  herald process  CPU {:.0}% ({:.1} s), peak RSS {:.0} MiB",
                p.cpu_percent, p.cpu_seconds, p.peak_rss_mib
            );
        }
        if let Some(p) = &self.bench_process {
            println!(
                "  bench process   CPU {:.0}% ({:.1} s), peak RSS {:.0} MiB (load generator{})",
                p.cpu_percent,
                p.cpu_seconds,
                p.peak_rss_mib,
                if self.settings["simulator"] == "in-process" {
                    " and simulator"
                } else {
                    ""
                }
            );
        }
        if let Some(b) = self.bytes_stored_per_notification {
            println!("  stored          {b:.0} bytes per notification");
        }
        if let Some(c) = self.simulator_ceiling_per_second {
            println!("  simulator alone {c:.0} requests/s (its loopback ceiling on this machine)");
        }
        for (k, v) in &self.scenario_figures {
            println!("  {k:<15} {v}");
        }
        println!(
            "\n{}",
            if self.ok() {
                "OK: nothing lost, nothing sent twice."
            } else {
                "FAILED: something was lost, sent twice or refused."
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tooling::bench::workload::Kind;

    fn receipt(vendor: &str, recipient: &str, at: i64) -> Receipt {
        Receipt {
            vendor: vendor.into(),
            recipient: recipient.into(),
            received_at_ms: at,
            requests: 1,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=1000).rev().collect());
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p999, l.max),
            (500, 900, 990, 999, 1000)
        );
        assert_eq!(Latency::of(vec![]).count, 0);
    }

    #[test]
    fn counts_lost_and_duplicated_and_measures_from_the_ack() {
        let sms = Kind::new(Priority::Critical, Channel::Sms);
        let email = Kind::new(Priority::Low, Channel::Email);
        let accepted = [
            Accepted {
                n: 1,
                kind: sms,
                at_ms: 1_000,
            },
            Accepted {
                n: 2,
                kind: sms,
                at_ms: 1_000,
            },
            Accepted {
                n: 3,
                kind: email,
                at_ms: 1_500,
            },
            // A resubmission acknowledged again later: the first counts.
            Accepted {
                n: 3,
                kind: email,
                at_ms: 9_000,
            },
        ];
        let receipts = [
            receipt("twilio", "+10000000000001", 1_040),
            // Number 2 went out twice, through both SMS vendors.
            receipt("twilio", "+10000000000002", 1_100),
            receipt("sns", "+10000000000002", 1_300),
            receipt("sendgrid", "b3@bench.example", 2_500),
            // Not the bench's.
            receipt("sendgrid", "ada@example.com", 2_600),
        ];
        let d = deliveries(&accepted, &receipts, 0);
        assert_eq!((d.delivered, d.lost, d.duplicated), (3, 0, 1));
        assert_eq!(d.lanes[&Priority::Critical].max, 100);
        assert_eq!(d.lanes[&Priority::Low].max, 1_000);
        let d = deliveries(&accepted, &receipts[..1], 0);
        assert_eq!((d.delivered, d.lost), (1, 2));
        assert_eq!(d.timeline[1].accepted, 3);
    }
}
