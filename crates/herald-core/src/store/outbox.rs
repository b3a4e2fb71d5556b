//! `Outbox`: what the relay publishes to the bus (the transactional
//! outbox, written by `Intake::create` when the bus is Kafka).

use async_trait::async_trait;

use super::StoreError;
use crate::events::OutboxEvent;

#[async_trait]
pub trait Outbox: Send + Sync {
    /// Takes or renews the outbox relay's lease for `holder` until
    /// `now_ms + lease_ms`: true if `holder` is the one relay now (the lease
    /// was free, expired, or already its own).
    async fn relay_lease(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` outbox events not yet published: the highest lane's
    /// first, in outbox order within a lane.
    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Marks these outbox events published.
    async fn outbox_published(&self, seqs: Vec<i64>) -> Result<(), StoreError>;
}
