//! The local bus: deliveries are claimed straight from the store, highest
//! lane first. Workers sleep on a per-channel `Notify` that the API pokes
//! after each commit, with a poll as a backstop for scheduled work, retries
//! coming due and leases expiring.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::bus::{Bus, BusError};
use herald_core::model::{Channel, Priority};
use herald_core::store::{Claim, ClaimedDelivery, Queue};
use tokio::sync::Notify;

pub struct LocalBus {
    store: Arc<dyn Queue>,
    lease: Duration,
    wake: [Notify; Channel::ALL.len()],
}

impl LocalBus {
    /// `lease`: how long a claimed delivery is held before another worker
    /// may take it over (it must outlast a vendor call's timeout).
    pub fn new(store: Arc<dyn Queue>, lease: Duration) -> Self {
        Self {
            store,
            lease,
            wake: std::array::from_fn(|_| Notify::new()),
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn announce(&self, channels: &[Channel]) {
        for &c in channels {
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
        let lease_ms = herald_core::ms(self.lease);
        Ok(self
            .store
            .claim(Claim::new(
                channel,
                priority,
                limit,
                herald_core::now_ms(),
                lease_ms,
            ))
            .await?)
    }

    async fn wait(&self, channel: Channel, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake[channel.index()].notified()).await;
    }
}
