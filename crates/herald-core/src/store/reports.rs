//! `Reports`: reads for tooling (the demo's report, benchmarks), not for
//! serving traffic: every delivery at once. Not part of `Store`.

use async_trait::async_trait;

use super::StoreError;
use crate::model::{Channel, DeliveryState, Priority};

/// One finished or pending delivery, for reports (the demo, benchmarks).
#[derive(Debug, Clone)]
pub struct DeliverySummary {
    pub channel: Channel,
    pub priority: Priority,
    pub state: DeliveryState,
    pub provider: Option<String>,
    pub accepted_at_ms: i64,
    pub sent_at_ms: Option<i64>,
}

#[async_trait]
pub trait Reports: Send + Sync {
    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError>;
}
