//! Admission control at the API (`server.admission`): each channel's lanes
//! are judged a few times a second from what the store reports (how much
//! waits, how long the oldest due delivery has waited) against the lanes'
//! objectives (`herald_core::admission`), and a notification is refused
//! with `429` and a `Retry-After` while a lane it would join cannot deliver
//! it in time. Every API node judges from the store, so a fleet's nodes
//! agree without talking to each other.
//!
//! What the store does not answer is not a reason to refuse: the gate then
//! keeps its last verdicts, and the intake write itself fails if the store
//! is down.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::admission::{counts_needed, judge_channels, LaneLoad, LaneObjective, Verdict};
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::status::Throughput;
use herald_core::store::{Depths, LaneAsk};
use tokio_util::sync::CancellationToken;

use super::problem::ApiError;
use crate::telemetry as m;

/// The verdicts in force, per channel and lane. Admits everything until
/// the first judgement, and always when admission control is off.
#[derive(Default)]
pub struct Gate {
    verdicts: RwLock<HashMap<Channel, Lanes<Verdict>>>,
}

impl Gate {
    /// `Ok` when every channel of the notification admits its lane.
    pub fn check(&self, lane: Priority, channels: &[Channel]) -> Result<(), ApiError> {
        let verdicts = self.verdicts.read().unwrap_or_else(|p| p.into_inner());
        for ch in channels {
            if let Some(Verdict::Refuse {
                reason,
                retry_after_s,
            }) = verdicts.get(ch).map(|v| v[lane])
            {
                metrics::counter!(m::ADMISSION_REFUSED, "lane" => lane.as_str(), "reason" => reason.as_str())
                    .increment(1);
                return Err(ApiError::LaneBehind {
                    lane,
                    channel: *ch,
                    reason,
                    retry_after: Duration::from_secs(retry_after_s),
                });
            }
        }
        Ok(())
    }

    /// The lanes refusing now, as `channel lane: reason`.
    pub fn shedding(&self) -> Vec<String> {
        let verdicts = self.verdicts.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = verdicts
            .iter()
            .flat_map(|(ch, lanes)| {
                lanes.iter().filter_map(move |(lane, v)| match v {
                    Verdict::Refuse { reason, .. } => {
                        Some(format!("{ch} {}: {}", lane.as_str(), reason.as_str()))
                    }
                    Verdict::Admit => None,
                })
            })
            .collect();
        out.sort();
        out
    }

    fn set(&self, verdicts: HashMap<Channel, Lanes<Verdict>>) {
        *self.verdicts.write().unwrap_or_else(|p| p.into_inner()) = verdicts;
    }
}

/// Each channel's lanes as the store reports them at `now_ms`.
pub async fn measure(
    depths: &dyn Depths,
    channels: &[Channel],
    now_ms: i64,
) -> Result<HashMap<Channel, Lanes<LaneLoad>>, herald_core::store::StoreError> {
    let mut loads: HashMap<Channel, Lanes<LaneLoad>> =
        channels.iter().map(|ch| (*ch, Lanes::default())).collect();
    for d in depths.queue_depths().await? {
        if let Some(lanes) = loads.get_mut(&d.channel) {
            lanes[d.priority].waiting = d.pending;
        }
    }
    for lag in depths.oldest_due(now_ms).await? {
        if let Some(lanes) = loads.get_mut(&lag.channel) {
            lanes[lag.priority].oldest_wait_ms = now_ms.saturating_sub(lag.oldest_due_at_ms);
            lanes[lag.priority].due = lag.due;
        }
    }
    Ok(loads)
}

/// Each channel's lanes for the judge, from `loads` (their rates filled
/// in): each lane read with its bounded counts (`Depths::lane_queues`,
/// `admission::counts_needed`), so a long queue costs the judge what a
/// short one does. (`measure`, for `/metrics`, counts everything.)
pub async fn measure_for_judging(
    depths: &dyn Depths,
    loads: &mut HashMap<Channel, Lanes<LaneLoad>>,
    objectives: &Lanes<LaneObjective>,
    now_ms: i64,
    capped: &mut CapCounts,
) -> Result<(), herald_core::store::StoreError> {
    capped.round = capped.round.wrapping_add(1);
    // Every lane of every channel in one read: what to count of each
    // first, then each lane's verdict from its counts.
    let mut asks = Vec::with_capacity(loads.len() * Priority::ALL.len());
    let mut known = Vec::with_capacity(asks.capacity());
    for (&channel, lanes) in loads.iter() {
        for lane in Priority::ALL {
            let mut up_to = counts_needed(&objectives[lane], lanes[lane].delivered_per_second);
            let last = capped.known(channel, lane, objectives[lane].backlog_cap);
            if last.is_some() {
                up_to.waiting = 1;
            }
            asks.push(LaneAsk {
                channel,
                lane,
                up_to,
            });
            known.push(last);
        }
    }
    let queues = depths.lane_queues(now_ms, &asks).await?;
    for ((ask, q), known) in asks.iter().zip(queues).zip(known) {
        let Some(load) = loads.get_mut(&ask.channel).map(|l| &mut l[ask.lane]) else {
            continue;
        };
        load.waiting = match known {
            Some(_) if q.waiting == 0 => 0,
            Some(w) => w.max(1),
            None => {
                capped.last.insert((ask.channel, ask.lane), q.waiting);
                q.waiting
            }
        };
        load.due = q.due;
        load.oldest_wait_ms = q.oldest_due_at_ms.map_or(0, |at| now_ms.saturating_sub(at));
    }
    Ok(())
}

/// How often a capped lane far from its cap is counted in full.
const CAP_RECOUNT: u32 = 10;

/// The last full counts of the lanes with a backlog cap (the low lane's
/// 10 million). Counting a backlog of millions on every judgement took the
/// `flood` bench's Herald 8% of its deliveries, for a verdict that cannot
/// change in a second: a lane under 90% of its cap is counted every
/// `CAP_RECOUNT`th judgement (every 2.5 to 20 s), and the last count
/// stands in between; near its cap, every time.
#[derive(Default)]
pub struct CapCounts {
    last: HashMap<(Channel, Priority), u64>,
    round: u32,
}

impl CapCounts {
    /// The count to use without counting again, if there is one.
    fn known(&self, channel: Channel, lane: Priority, cap: Option<u64>) -> Option<u64> {
        let cap = cap?;
        let last = *self.last.get(&(channel, lane))?;
        let far = last < cap / 10 * 9;
        (far && !self.round.is_multiple_of(CAP_RECOUNT)).then_some(last)
    }
}

/// Each lane's delivery rate, from this node's engine: finished deliveries
/// between judgements, smoothed (a quarter new, three quarters past).
struct Rates {
    throughput: Arc<Throughput>,
    last: HashMap<(Channel, Priority), (u64, f64)>,
    at: tokio::time::Instant,
}

impl Rates {
    fn new(throughput: Arc<Throughput>, channels: &[Channel]) -> Rates {
        let last = channels
            .iter()
            .flat_map(|&ch| {
                Priority::ALL.map(|lane| ((ch, lane), (throughput.total(ch, lane), 0.0)))
            })
            .collect();
        Rates {
            throughput,
            last,
            at: tokio::time::Instant::now(),
        }
    }

    /// Updates the rates and writes them into `loads`.
    fn apply(&mut self, loads: &mut HashMap<Channel, Lanes<LaneLoad>>) {
        let now = tokio::time::Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        self.at = now;
        for (&(ch, lane), (total, rate)) in self.last.iter_mut() {
            let t = self.throughput.total(ch, lane);
            let now_rate = t.saturating_sub(*total) as f64 / secs;
            *total = t;
            *rate = if *rate == 0.0 {
                now_rate
            } else {
                0.75 * *rate + 0.25 * now_rate
            };
            if let Some(lanes) = loads.get_mut(&ch) {
                lanes[lane].delivered_per_second = *rate;
            }
        }
    }
}

/// Judges the lanes every `every` until `stop`. On a node that also
/// delivers (`throughput`), a lane is judged by the due work ahead at the
/// rate it is being delivered, so it refuses before it falls behind; on an
/// API-only node, by how long its oldest due delivery has waited, so it
/// refuses once it is behind (within `every`).
pub async fn keep_judging(
    gate: Arc<Gate>,
    depths: Arc<dyn Depths>,
    channels: Vec<Channel>,
    objectives: Lanes<LaneObjective>,
    throughput: Option<Arc<Throughput>>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut rates = throughput.map(|t| Rates::new(t, &channels));
    let mut capped = CapCounts::default();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let started = tokio::time::Instant::now();
        let now = herald_core::now_ms();
        let mut loads: HashMap<Channel, Lanes<LaneLoad>> =
            channels.iter().map(|ch| (*ch, Lanes::default())).collect();
        if let Some(r) = rates.as_mut() {
            r.apply(&mut loads);
        }
        let measured = tokio::time::timeout(every.max(Duration::from_millis(100)) * 4, async {
            measure_for_judging(depths.as_ref(), &mut loads, &objectives, now, &mut capped).await
        })
        .await;
        match measured {
            Ok(Ok(())) => gate.set(judge_channels(&loads, &objectives)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "admission: the store did not answer; verdicts kept")
            }
            Err(_) => tracing::debug!("admission: the store was slow to answer; verdicts kept"),
        }
        wait = next_wait(every, started.elapsed());
    }
}

/// The longest the judge waits between measurements, however slow they are.
const SLOWEST_REFRESH: Duration = Duration::from_secs(2);

/// How long to wait before measuring again: `every`, or longer when a
/// measurement took long (the depth counts read every waiting row, and a
/// backlog of millions makes them slow), so that measuring takes at most a
/// twentieth of the time, up to `SLOWEST_REFRESH`.
fn next_wait(every: Duration, took: Duration) -> Duration {
    (took * 19).clamp(every, every.max(SLOWEST_REFRESH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::admission::Refusal;
    use herald_core::store::{LaneLag, LaneQueue, QueueDepth, StoreError};

    struct Reported(Vec<QueueDepth>, Vec<LaneLag>);

    #[async_trait::async_trait]
    impl Depths for Reported {
        async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
            Ok(self.0.clone())
        }
        async fn oldest_due(&self, _: i64) -> Result<Vec<LaneLag>, StoreError> {
            Ok(self.1.clone())
        }
        async fn lane_queues(
            &self,
            _: i64,
            lanes: &[LaneAsk],
        ) -> Result<Vec<LaneQueue>, StoreError> {
            Ok(lanes
                .iter()
                .map(|ask| {
                    let lane = (ask.channel, ask.lane);
                    let waiting = self.0.iter().find(|d| (d.channel, d.priority) == lane);
                    let lag = self.1.iter().find(|l| (l.channel, l.priority) == lane);
                    LaneQueue {
                        oldest_due_at_ms: lag.map(|l| l.oldest_due_at_ms),
                        due: lag.map_or(0, |l| l.due.min(ask.up_to.due)),
                        waiting: waiting.map_or(0, |d| d.pending.min(ask.up_to.waiting)),
                    }
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_capped_lane_far_from_its_cap_is_counted_in_full_every_tenth_time() {
        let low = |pending| {
            Reported(
                vec![QueueDepth {
                    channel: Channel::Email,
                    priority: Priority::Low,
                    pending,
                }],
                vec![],
            )
        };
        let objectives = Lanes::from_fn(|_| LaneObjective {
            within: None,
            backlog_cap: Some(1_000),
        });
        async fn judged(
            store: Reported,
            objectives: &Lanes<LaneObjective>,
            capped: &mut CapCounts,
        ) -> u64 {
            let mut loads: HashMap<Channel, Lanes<LaneLoad>> =
                [(Channel::Email, Lanes::default())].into_iter().collect();
            measure_for_judging(&store, &mut loads, objectives, 0, capped)
                .await
                .expect("measured");
            loads[&Channel::Email][Priority::Low].waiting
        }
        let mut capped = CapCounts::default();
        assert_eq!(
            judged(low(500), &objectives, &mut capped).await,
            500,
            "first: counted"
        );
        for _ in 0..7 {
            assert_eq!(
                judged(low(700), &objectives, &mut capped).await,
                500,
                "the last count stands"
            );
        }
        assert_eq!(
            judged(low(0), &objectives, &mut capped).await,
            0,
            "empty is seen at once"
        );
        assert_eq!(
            judged(low(950), &objectives, &mut capped).await,
            950,
            "the tenth: counted"
        );
        assert_eq!(
            judged(low(960), &objectives, &mut capped).await,
            960,
            "near the cap: every time"
        );
    }

    #[test]
    fn a_slow_measurement_is_made_less_often_but_at_least_every_two_seconds() {
        let every = Duration::from_millis(250);
        assert_eq!(next_wait(every, Duration::from_millis(2)), every);
        assert_eq!(
            next_wait(every, Duration::from_millis(50)),
            Duration::from_millis(950)
        );
        assert_eq!(next_wait(every, Duration::from_secs(1)), SLOWEST_REFRESH);
        // A refresh set slower than the cap is kept.
        let slow = Duration::from_secs(5);
        assert_eq!(next_wait(slow, Duration::from_secs(1)), slow);
    }

    #[tokio::test]
    async fn a_channel_behind_refuses_its_lane_and_only_its_own() {
        let store = Reported(
            vec![QueueDepth {
                channel: Channel::Sms,
                priority: Priority::Normal,
                pending: 40_000,
            }],
            vec![LaneLag {
                channel: Channel::Sms,
                priority: Priority::Normal,
                oldest_due_at_ms: 1_000,
                due: 39_000,
            }],
        );
        let loads = measure(&store, &[Channel::Sms, Channel::Email], 13_500)
            .await
            .expect("measured");
        assert_eq!(loads[&Channel::Sms][Priority::Normal].waiting, 40_000);
        assert_eq!(
            loads[&Channel::Sms][Priority::Normal].oldest_wait_ms,
            12_500
        );
        assert_eq!(loads[&Channel::Sms][Priority::Normal].due, 39_000);
        let objectives = Lanes::from_fn(|lane| LaneObjective {
            within: (lane == Priority::Normal).then(|| Duration::from_secs(10)),
            backlog_cap: None,
        });
        let gate = Gate::default();
        gate.set(judge_channels(&loads, &objectives));
        let Err(ApiError::LaneBehind {
            lane,
            channel,
            reason,
            retry_after,
        }) = gate.check(Priority::Normal, &[Channel::Email, Channel::Sms])
        else {
            panic!("the normal SMS lane expects 12.5 s, past half its 10 s objective");
        };
        assert_eq!(
            (lane, channel, reason),
            (Priority::Normal, Channel::Sms, Refusal::Objective)
        );
        assert_eq!(
            retry_after,
            Duration::from_secs(8),
            "7.5 s over, rounded up"
        );
        assert!(gate.check(Priority::Normal, &[Channel::Email]).is_ok());
        assert_eq!(gate.shedding(), vec!["sms normal: objective".to_owned()]);
        assert!(gate.check(Priority::Critical, &[Channel::Sms]).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lanes_rate_is_what_the_engine_finished_smoothed() {
        let throughput = Arc::new(Throughput::default());
        let mut rates = Rates::new(throughput.clone(), &[Channel::Sms]);
        let mut loads: HashMap<Channel, Lanes<LaneLoad>> =
            [(Channel::Sms, Lanes::default())].into_iter().collect();
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..100 {
            throughput.finished(Channel::Sms, Priority::Normal);
        }
        rates.apply(&mut loads);
        let rate = |l: &HashMap<Channel, Lanes<LaneLoad>>| {
            l[&Channel::Sms][Priority::Normal].delivered_per_second
        };
        assert_eq!(rate(&loads), 100.0);
        assert_eq!(
            loads[&Channel::Sms][Priority::Critical].delivered_per_second,
            0.0
        );
        // A second with nothing finished: down by a quarter, not to zero.
        tokio::time::advance(Duration::from_secs(1)).await;
        rates.apply(&mut loads);
        assert_eq!(rate(&loads), 75.0);
    }
}
