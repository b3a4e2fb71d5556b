//! What the console's Now page shows, from the same metrics Prometheus
//! scrapes: this node's registry, sampled every few seconds while someone
//! looks, rates and percentiles taken over the samples of the last five
//! minutes as `rate()` and `histogram_quantile()` would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use herald_core::model::{Channel, Priority};
use serde::Serialize;

use crate::telemetry as m;

/// How often the sampler reads the registry while it runs.
const EVERY: Duration = Duration::from_secs(5);
/// How far back rates and percentiles look.
pub const WINDOW_MS: i64 = 5 * 60_000;
/// Samples kept: the window and a little more.
const KEEP: usize = 70;

/// One read of the registry: the series the console uses, by their full
/// name with labels.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_ms: i64,
    series: HashMap<String, f64>,
}

/// Samples of this node's metrics.
pub struct Sampler {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    samples: Mutex<VecDeque<Sample>>,
    started: std::sync::Once,
}

/// A channel's lane over the window.
#[derive(Debug, Clone, Serialize)]
pub struct LaneRow {
    pub channel: Channel,
    pub lane: Priority,
    /// Sent per second (reached the vendor), `None` until two samples.
    pub delivered_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Deliveries not finished, from the store.
    pub queued: Option<u64>,
}

/// The Now page's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Now {
    /// Accepted notifications per second, by lane, highest first.
    pub accepted_per_s: Vec<(&'static str, Option<f64>)>,
    pub lanes: Vec<LaneRow>,
    /// Seconds the figures span (0 with one sample).
    pub window_s: i64,
}

impl Sampler {
    pub fn new(handle: metrics_exporter_prometheus::PrometheusHandle) -> Arc<Sampler> {
        Arc::new(Sampler {
            handle,
            samples: Mutex::new(VecDeque::new()),
            started: std::sync::Once::new(),
        })
    }

    /// Starts sampling in the background (once; it ends with the sampler),
    /// and takes a sample now.
    pub fn look(self: &Arc<Self>) {
        self.started.call_once(|| {
            let weak: Weak<Sampler> = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(s) = weak.upgrade() else { return };
                    s.sample();
                }
            });
        });
        self.sample();
    }

    fn sample(&self) {
        let text = self.handle.render();
        let sample = Sample {
            at_ms: herald_core::now_ms(),
            series: parse(&text),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        // Two looks in the same second add nothing.
        if samples
            .back()
            .is_some_and(|s| sample.at_ms - s.at_ms < 1_000)
        {
            samples.pop_back();
        }
        samples.push_back(sample);
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }

    /// The figures over the window, for the channels given.
    pub fn now(&self, channels: &[Channel]) -> Now {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = samples.back() else {
            return Now::default();
        };
        let first = samples
            .iter()
            .find(|s| last.at_ms - s.at_ms <= WINDOW_MS)
            .unwrap_or(last);
        let span_s = (last.at_ms - first.at_ms) as f64 / 1000.0;
        let rate = |series: &str| -> Option<f64> {
            if span_s <= 0.0 {
                return None;
            }
            let d = last.series.get(series).copied().unwrap_or(0.0)
                - first.series.get(series).copied().unwrap_or(0.0);
            Some(d.max(0.0) / span_s)
        };
        let accepted = Priority::ALL
            .iter()
            .map(|lane| {
                let series = format!("{}{{priority=\"{}\"}}", m::ACCEPTED, lane.as_str());
                (lane.as_str(), rate(&series))
            })
            .collect();
        let mut lanes = Vec::new();
        for &channel in channels {
            for lane in Priority::ALL {
                let labels = format!(
                    "channel=\"{}\",lane=\"{}\"",
                    channel.as_str(),
                    lane.as_str()
                );
                let count = format!("{}_count{{{labels}}}", m::ACCEPT_TO_VENDOR_SECONDS);
                let buckets = bucket_deltas(first, last, &labels);
                lanes.push(LaneRow {
                    channel,
                    lane,
                    delivered_per_s: rate(&count),
                    p50_ms: (span_s > 0.0).then(|| quantile(0.5, &buckets)).flatten(),
                    p99_ms: (span_s > 0.0).then(|| quantile(0.99, &buckets)).flatten(),
                    queued: None,
                });
            }
        }
        Now {
            accepted_per_s: accepted,
            lanes,
            window_s: (span_s as i64).max(0),
        }
    }
}

/// The accept-to-vendor histogram's buckets for one label set: (upper
/// bound in seconds, how many more between the two samples), by bound.
fn bucket_deltas(first: &Sample, last: &Sample, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{}_bucket{{{labels},le=\"", m::ACCEPT_TO_VENDOR_SECONDS);
    let mut out: Vec<(f64, f64)> = last
        .series
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let before = first.series.get(k).copied().unwrap_or(0.0);
            Some((bound, (v - before).max(0.0)))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile in milliseconds from cumulative bucket counts, by
/// linear interpolation within the bucket (as `histogram_quantile`);
/// `None` when nothing was observed.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower * 1000.0);
            }
            let within = count - below;
            let frac = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some((lower + (bound - lower) * frac) * 1000.0);
        }
        lower = bound;
        below = count;
    }
    None
}

/// The series of Prometheus text the console reads, by name with labels.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(m::ACCEPTED) || l.starts_with(m::ACCEPT_TO_VENDOR_SECONDS))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 100 observations: 50 under 10 ms, 49 more under 100 ms, 1 under 1 s.
        let b = [
            (0.01, 50.0),
            (0.1, 99.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &b), Some(10.0));
        let p99 = quantile(0.99, &b).expect("p99");
        assert!((p99 - 100.0).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &[(0.01, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn rates_come_from_the_window_s_first_and_last_samples() {
        let sampler = Sampler::new(crate::telemetry::metrics());
        let series = |n: f64| {
            let mut s = HashMap::new();
            s.insert(format!("{}{{priority=\"critical\"}}", m::ACCEPTED), n);
            let labels = "channel=\"sms\",lane=\"critical\"";
            s.insert(
                format!("{}_count{{{labels}}}", m::ACCEPT_TO_VENDOR_SECONDS),
                n,
            );
            s.insert(
                format!(
                    "{}_bucket{{{labels},le=\"0.05\"}}",
                    m::ACCEPT_TO_VENDOR_SECONDS
                ),
                n,
            );
            s.insert(
                format!(
                    "{}_bucket{{{labels},le=\"+Inf\"}}",
                    m::ACCEPT_TO_VENDOR_SECONDS
                ),
                n,
            );
            s
        };
        {
            let mut samples = sampler.samples.lock().expect("lock");
            samples.push_back(Sample {
                at_ms: 0,
                series: series(100.0),
            });
            samples.push_back(Sample {
                at_ms: 10_000,
                series: series(300.0),
            });
        }
        let now = sampler.now(&[Channel::Sms]);
        assert_eq!(now.window_s, 10);
        assert_eq!(now.accepted_per_s[0], ("critical", Some(20.0)));
        let sms = &now.lanes[0];
        assert_eq!((sms.channel, sms.lane), (Channel::Sms, Priority::Critical));
        assert_eq!(sms.delivered_per_s, Some(20.0));
        assert!(sms.p99_ms.is_some_and(|p| p <= 50.0));
        assert_eq!(now.lanes[1].delivered_per_s, Some(0.0), "high: none");
    }

    #[test]
    fn the_registry_text_is_read_by_series() {
        let text = "# TYPE herald_notifications_accepted_total counter\n\
                    herald_notifications_accepted_total{priority=\"low\"} 7\n\
                    herald_queue_depth{channel=\"sms\"} 3\n";
        let s = parse(text);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s["herald_notifications_accepted_total{priority=\"low\"}"],
            7.0
        );
    }
}
