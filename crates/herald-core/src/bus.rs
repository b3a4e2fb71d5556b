//! The `Bus` extension point: how deliveries reach a channel's workers.
//! `local` (the store's delivery rows, claimed with leases) or Kafka
//! (`herald-bus/src/kafka.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Channel, Priority};
use crate::store::{ClaimedDelivery, Leased, StoreError};

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
    /// handed to a worker; at shutdown, before the workers finish.
    async fn close(&self) {}
    /// A place in the lane's hand-off, for a delivery about to be stored:
    /// it is created under the place's lease and, once stored, handed to
    /// this node's workers (`hand`) instead of being claimed, which saves
    /// the store a claim per delivery (docs/benchmarks.md, issue 18).
    /// `None` when this bus does not hand off, or not now (no worker pool
    /// for the channel here, work already waits in the lane, the lane is
    /// deferred, enough is handed and not yet taken, closing): the delivery
    /// is created queued and announced.
    fn reserve(&self, _channel: Channel, _lane: Priority) -> Option<Handoff> {
        None
    }
    /// Hands deliveries created under their places' leases to the workers
    /// (what `take` returns first). Each place is given back once its
    /// delivery is taken; what is closing gives them back to the store.
    async fn hand(&self, _handed: Vec<(Handoff, ClaimedDelivery)>) {}
    /// Gives deliveries that may have been created under their places'
    /// leases back to the store, queued (the write that created them
    /// failed, so they most likely were not; if it did commit, they are
    /// sent as any queued delivery, not only once their leases run out).
    async fn give_back(&self, _handed: Vec<(Handoff, ClaimedDelivery)>) {}
}

/// A place in a lane's hand-off (`Bus::reserve`): the lease a delivery is
/// created under. Dropped, its place is free again, whether its delivery
/// was taken by a worker or never stored (the write failed, the key was
/// taken, the request went away).
#[derive(Debug)]
pub struct Handoff {
    pub lease: Leased,
    taken: Arc<AtomicUsize>,
}

impl Handoff {
    /// Takes one of `cap` places counted by `taken`, if one is free.
    pub fn take(taken: &Arc<AtomicUsize>, cap: usize, lease: Leased) -> Option<Handoff> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(Handoff {
            lease,
            taken: taken.clone(),
        })
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LeaseToken;

    #[test]
    fn a_handoff_place_is_free_again_once_dropped() {
        let taken = Arc::new(AtomicUsize::new(0));
        let lease = Leased {
            token: LeaseToken(7),
            until_ms: 60_000,
        };
        let a = Handoff::take(&taken, 2, lease).expect("first place");
        let b = Handoff::take(&taken, 2, lease).expect("second place");
        assert!(Handoff::take(&taken, 2, lease).is_none(), "full");
        drop(a);
        let c = Handoff::take(&taken, 2, lease).expect("freed");
        drop((b, c));
        assert_eq!(taken.load(Ordering::Acquire), 0);
    }
}
