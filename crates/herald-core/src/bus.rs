//! The `Bus` extension point: how deliveries reach a channel's workers.
//! `local` (the store's delivery rows, claimed with leases) or Kafka
//! (`herald-bus/src/kafka.rs`).

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Channel, Priority};
use crate::store::{ClaimedDelivery, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Says that deliveries of these channels and lanes were just stored
    /// (or became due).
    fn announce(&self, work: &[(Channel, Priority)]);
    /// Says that deliveries of any channel and lane may have become due
    /// (dead letters replayed, circuits released by hand).
    fn announce_all(&self) {
        let all: Vec<(Channel, Priority)> = Channel::ALL
            .iter()
            .flat_map(|&c| Priority::ALL.map(|p| (c, p)))
            .collect();
        self.announce(&all);
    }
    /// Takes up to `limit` due deliveries of one channel and lane, each
    /// already moved to `sending` under a lease.
    async fn take(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, BusError>;
    /// Returns when work may have arrived for the channel, or after `at_most`.
    async fn wait(&self, channel: Channel, at_most: Duration);
    /// The dispatcher leaves this lane's work for now (every route for it
    /// is closed, so it would only wait): a bus that claims work ahead of
    /// the dispatcher gives back what it holds for the lane and claims no
    /// more of it until the lane is next taken from.
    async fn defer(&self, _channel: Channel, _priority: Priority) {}
    /// Stops taking in work and gives back what was taken in but not
    /// handed to a worker; at shutdown, before the workers finish. A bus
    /// that holds nothing of its own (the local bus) has nothing to do.
    async fn close(&self) {}
}
