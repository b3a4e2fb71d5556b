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

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::bus::{Bus, BusError};
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::store::{Claim, ClaimedDelivery, Queue};
use tokio::sync::Notify;

pub struct LocalBus {
    store: Arc<dyn Queue>,
    lease: Duration,
    poll: Duration,
    wake: [Notify; Channel::ALL.len()],
    lanes: [Lanes<LaneWork>; Channel::ALL.len()],
}

/// What the bus knows of one channel's lane.
#[derive(Default)]
struct LaneWork {
    /// Something may be waiting: announced, or the last claim was full.
    maybe: AtomicBool,
    /// When the lane was last asked (Unix ms; 0: never).
    asked_at_ms: AtomicI64,
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
        }
    }

    /// Whether a claim of this lane may find something now.
    fn worth_asking(&self, lane: &LaneWork, now_ms: i64) -> bool {
        lane.maybe.swap(false, Ordering::AcqRel)
            || now_ms - lane.asked_at_ms.load(Ordering::Acquire) >= herald_core::ms(self.poll)
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lane = &self.lanes[channel.index()][priority];
        let now_ms = herald_core::now_ms();
        if !self.worth_asking(lane, now_ms) {
            return Ok(Vec::new());
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
        if claimed.as_ref().map_or(true, |b| b.len() == limit) {
            lane.maybe.store(true, Ordering::Release);
        }
        Ok(claimed?)
    }

    async fn wait(&self, channel: Channel, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake[channel.index()].notified()).await;
    }
}
