//! The local bus: deliveries are claimed straight from the store, highest
//! lane first. Workers sleep on a per-channel `Notify` that the API pokes
//! after each commit, with a poll as a backstop for scheduled work, retries
//! coming due and leases expiring.
//!
//! A claim is a round trip to the store (on PostgreSQL, most of what a
//! delivery costs is round trips: docs/benchmarks.md, issue 18), so a lane
//! is only asked when it may hold something: it was announced, its last
//! claim came back full, or a poll interval has passed since it was last
//! asked (what comes due by itself: retries, scheduled sends, expired
//! leases, work another node stored).
//!
//! Hand-off: a delivery accepted on a node that runs the channel's worker
//! pool, due at once, is created already leased to that pool and handed to
//! it in memory, not claimed: the claim is a row update and a statement
//! the store is spared. Only while the lane has nothing waiting in the
//! store (its last claim was not full), so handed work never overtakes
//! stored work, and only a claim batch's worth at a time per lane. What is
//! handed but not yet taken is given back to the store (queued, due at
//! once) when the lane is deferred, when its lease runs low while it
//! waits, and at shutdown; if the node dies, its lease runs out and any
//! node claims it, as a claimed delivery's would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::bus::{Bus, BusError, Handoff};
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::store::{Claim, ClaimedDelivery, LeaseToken, Leased, Queue};
use tokio::sync::Notify;

pub struct LocalBus {
    store: Arc<dyn Queue>,
    lease: Duration,
    poll: Duration,
    wake: [Notify; Channel::ALL.len()],
    lanes: [Lanes<LaneWork>; Channel::ALL.len()],
    /// The channels whose worker pools run on this node: the only ones
    /// handed off to.
    workers: [bool; Channel::ALL.len()],
    /// The most deliveries of one lane handed off and not yet taken.
    handoff_cap: usize,
    closed: AtomicBool,
}

type Handed = (Handoff, ClaimedDelivery);

/// What the bus knows of one channel's lane.
#[derive(Default)]
struct LaneWork {
    /// Something may be waiting: announced, or the last claim was full.
    maybe: AtomicBool,
    /// When the lane was last asked (Unix ms; 0: never).
    asked_at_ms: AtomicI64,
    /// The store may hold a backlog of the lane: its last claim was full,
    /// or failed. No hand-off then: the backlog goes first.
    behind: AtomicBool,
    /// The dispatcher left the lane (its route is closed): no hand-off
    /// until it is next taken from.
    deferred: AtomicBool,
    /// Hand-off places taken: reserved, or handed and not yet taken.
    places: Arc<AtomicUsize>,
    handed: Mutex<VecDeque<Handed>>,
}

impl LocalBus {
    /// `lease`: how long a claimed delivery is held before another worker
    /// may take it over (it must outlast a vendor call's timeout). `poll`:
    /// how long a lane nothing was announced for may go unasked.
    pub fn new(store: Arc<dyn Queue>, lease: Duration, poll: Duration) -> Self {
        Self {
            store,
            lease,
            poll,
            wake: std::array::from_fn(|_| Notify::new()),
            lanes: std::array::from_fn(|_| Lanes::default()),
            workers: [false; Channel::ALL.len()],
            handoff_cap: 0,
            closed: AtomicBool::new(false),
        }
    }

    /// Hands deliveries of `channels` (whose worker pools run on this
    /// node) straight to the workers, up to `cap` per lane at a time.
    pub fn handing_off(mut self, channels: &[Channel], cap: usize) -> Self {
        for c in channels {
            self.workers[c.index()] = true;
        }
        self.handoff_cap = cap;
        self
    }

    /// Whether a claim of this lane may find something now.
    fn worth_asking(&self, lane: &LaneWork, now_ms: i64) -> bool {
        lane.maybe.swap(false, Ordering::AcqRel)
            || now_ms - lane.asked_at_ms.load(Ordering::Acquire) >= herald_core::ms(self.poll)
    }

    /// Up to `limit` of what was handed to the lane, oldest first; what
    /// waited until less than half its lease is left goes back to the
    /// store instead (claimed again as any queued delivery is).
    async fn take_handed(&self, lane: &LaneWork, limit: usize) -> Vec<ClaimedDelivery> {
        let now_ms = herald_core::now_ms();
        let fresh_until = now_ms + herald_core::ms(self.lease / 2);
        let (mut taken, mut stale) = (Vec::new(), Vec::new());
        {
            let mut handed = lane.handed.lock().unwrap_or_else(|e| e.into_inner());
            while taken.len() < limit {
                let Some((place, d)) = handed.pop_front() else {
                    break;
                };
                drop(place);
                if d.lease_until_ms >= fresh_until {
                    taken.push(d);
                } else {
                    stale.push(d);
                }
            }
        }
        self.release(stale).await;
        taken
    }

    /// Everything handed to the lane and not yet taken.
    fn drain(lane: &LaneWork) -> Vec<ClaimedDelivery> {
        let mut handed = lane.handed.lock().unwrap_or_else(|e| e.into_inner());
        handed.drain(..).map(|(_, d)| d).collect()
    }

    /// Gives back everything handed to any lane and not yet taken.
    async fn release_all_handed(&self) {
        let handed: Vec<ClaimedDelivery> = self
            .lanes
            .iter()
            .flat_map(|lanes| lanes.values())
            .flat_map(Self::drain)
            .collect();
        self.release(handed).await;
    }

    /// Gives handed deliveries back to the store: queued, due at once, as
    /// if never claimed. If the store cannot take them now, their leases
    /// run out and they are claimed then.
    async fn release(&self, deliveries: Vec<ClaimedDelivery>) {
        if deliveries.is_empty() {
            return;
        }
        let leases: Vec<(uuid::Uuid, LeaseToken)> =
            deliveries.iter().map(|d| (d.id, d.lease_token)).collect();
        let count = leases.len();
        if let Err(e) = self.store.release(leases, false).await {
            tracing::warn!(error = %e, count, "could not give handed deliveries back to the store; they are claimed once their leases run out");
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn announce(&self, work: &[(Channel, Priority)]) {
        for &(c, lane) in work {
            self.lanes[c.index()][lane]
                .maybe
                .store(true, Ordering::Release);
            // notify_one stores a permit, so a wake-up sent while the worker
            // is busy claiming is not lost.
            self.wake[c.index()].notify_one();
        }
    }

    async fn take(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, BusError> {
        if limit == 0 || self.closed.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let lane = &self.lanes[channel.index()][priority];
        lane.deferred.store(false, Ordering::Release);
        let mut taken = self.take_handed(lane, limit).await;
        let limit = limit - taken.len();
        let now_ms = herald_core::now_ms();
        if limit == 0 || !self.worth_asking(lane, now_ms) {
            return Ok(taken);
        }
        lane.asked_at_ms.store(now_ms, Ordering::Release);
        let claimed = self
            .store
            .claim(Claim::new(
                channel,
                priority,
                limit,
                now_ms,
                herald_core::ms(self.lease),
            ))
            .await;
        // A full claim may have left more behind; a failed one found out
        // nothing.
        let behind = claimed.as_ref().map_or(true, |b| b.len() == limit);
        lane.behind.store(behind, Ordering::Release);
        if behind {
            lane.maybe.store(true, Ordering::Release);
        }
        match claimed {
            Ok(claimed) => {
                taken.extend(claimed);
                Ok(taken)
            }
            // What was handed is held already: the workers take it, and
            // the failed claim is tried again next time.
            Err(_) if !taken.is_empty() => Ok(taken),
            Err(e) => Err(e.into()),
        }
    }

    async fn defer(&self, channel: Channel, priority: Priority) {
        let lane = &self.lanes[channel.index()][priority];
        lane.deferred.store(true, Ordering::Release);
        self.release(Self::drain(lane)).await;
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.release_all_handed().await;
    }

    fn reserve(&self, channel: Channel, priority: Priority) -> Option<Handoff> {
        let lane = &self.lanes[channel.index()][priority];
        if !self.workers[channel.index()]
            || self.closed.load(Ordering::Acquire)
            || lane.behind.load(Ordering::Acquire)
            || lane.deferred.load(Ordering::Acquire)
        {
            return None;
        }
        let lease = Leased {
            token: LeaseToken(rand::random()),
            until_ms: herald_core::now_ms() + herald_core::ms(self.lease),
        };
        Handoff::take(&lane.places, self.handoff_cap, lease)
    }

    async fn give_back(&self, handed: Vec<Handed>) {
        self.release(handed.into_iter().map(|(_, d)| d).collect())
            .await;
    }

    async fn hand(&self, handed: Vec<Handed>) {
        let mut woken = [false; Channel::ALL.len()];
        for (place, d) in handed {
            let c = d.channel.index();
            let lane = &self.lanes[c][d.priority];
            lane.handed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((place, d));
            woken[c] = true;
        }
        for c in Channel::ALL {
            if woken[c.index()] {
                self.wake[c.index()].notify_one();
            }
        }
        // Closed meanwhile: what was just handed goes back to the store
        // (`close` may have drained the lanes before it came).
        if self.closed.load(Ordering::Acquire) {
            self.release_all_handed().await;
        }
    }

    async fn wait(&self, channel: Channel, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake[channel.index()].notified()).await;
    }
}
