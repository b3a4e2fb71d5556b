//! `DeadLetters`: deliveries that used up their attempts, listed and put
//! back in the queue (the API, per tenant; the CLI, across tenants).

use async_trait::async_trait;

use super::StoreError;
use crate::model::{Channel, DeliveryState, Priority};

/// Which dead letters to list or replay. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub tenant_id: Option<String>,
    pub channel: Option<Channel>,
    /// The provider of the last attempt.
    pub provider: Option<String>,
    /// Died at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Died before this time (Unix ms).
    pub until_ms: Option<i64>,
}

/// Where a page of dead letters ends; the next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterCursor {
    pub dead_at_ms: i64,
    pub id: uuid::Uuid,
}

/// A delivery that used up its attempts, with why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The delivery id (also its vendor idempotency key).
    pub id: uuid::Uuid,
    pub notification_id: uuid::Uuid,
    pub tenant_id: String,
    pub channel: Channel,
    pub target: u32,
    pub priority: Priority,
    pub provider: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub dead_at_ms: i64,
    pub accepted_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Back to `queued` with its attempts reset; same id, same vendor key.
    Replayed,
    NotFound,
    /// It is not dead (already replayed, or never died).
    NotDead(DeliveryState),
}

#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Dead letters matching `filter`, oldest death first, after `after`.
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// Puts one dead delivery back in the queue (`tenant_id` scopes it).
    async fn replay_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: uuid::Uuid,
    ) -> Result<ReplayOutcome, StoreError>;
    /// Puts up to `limit` dead deliveries matching `filter` back in the
    /// queue, oldest first; returns how many.
    async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<u64, StoreError>;
}
