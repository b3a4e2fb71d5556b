//! `Upkeep`: housekeeping the workers run — expiring what waited past its
//! TTL, purging what is finished and past retention — and the queue's
//! depths for metrics.

use async_trait::async_trait;

pub use super::queue::Depths;
use super::StoreError;

#[async_trait]
pub trait Upkeep: Depths + Send + Sync {
    /// Moves waiting deliveries (queued, retry scheduled) whose notification
    /// expired by `now_ms` to `expired`; returns how many.
    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError>;
    /// Deletes up to `limit` notifications accepted before `before_ms` whose
    /// deliveries have all finished (sent, failed, dead, expired…), with
    /// their deliveries, attempts and idempotency keys; returns how many.
    async fn purge_finished(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
}
