//! `Suppressions`: each tenant's list of addresses not to send to, kept by
//! the API and the CLI and by the engine when a vendor says an address is
//! gone; and its changes, which every worker node follows to keep its own
//! copy for the delivery path (`herald::engine::suppressions`).

use async_trait::async_trait;

use super::StoreError;
use crate::model::Channel;
use crate::suppression::{Suppression, SuppressionReason};

/// Which suppressions to list. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuppressionFilter {
    /// None: every tenant's (the CLI).
    pub tenant_id: Option<String>,
    pub channel: Option<Channel>,
    pub reason: Option<SuppressionReason>,
    /// One address (in its normal form).
    pub address: Option<String>,
}

/// Where a page of suppressions ends (they come newest first); the next
/// page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionCursor {
    pub created_at_ms: i64,
    pub tenant_id: String,
    pub channel: Channel,
    pub address: String,
}

impl SuppressionCursor {
    pub fn after(s: &Suppression) -> SuppressionCursor {
        SuppressionCursor {
            created_at_ms: s.created_at_ms,
            tenant_id: s.tenant_id.clone(),
            channel: s.channel,
            address: s.address.clone(),
        }
    }
}

/// A suppression added, changed or lifted at `changed_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionChange {
    pub suppression: Suppression,
    /// It was lifted: the address may be sent to again.
    pub lifted: bool,
    pub changed_at_ms: i64,
}

/// Where a read of changes ends; the next read starts after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeCursor {
    pub changed_at_ms: i64,
    pub tenant_id: String,
    pub channel: String,
    pub address: String,
}

impl ChangeCursor {
    /// Every change at or after `ms`.
    pub fn from_ms(ms: i64) -> ChangeCursor {
        ChangeCursor {
            changed_at_ms: ms,
            ..ChangeCursor::default()
        }
    }

    pub fn after(c: &SuppressionChange) -> ChangeCursor {
        ChangeCursor {
            changed_at_ms: c.changed_at_ms,
            tenant_id: c.suppression.tenant_id.clone(),
            channel: c.suppression.channel.as_str().to_owned(),
            address: c.suppression.address.clone(),
        }
    }
}

#[async_trait]
pub trait Suppressions: Send + Sync {
    /// Adds an address to its tenant's list, or gives an entry already
    /// there the new reason, detail and time. Whether it was new (or
    /// lifted before).
    async fn suppress(&self, s: Suppression) -> Result<bool, StoreError>;
    /// Lifts a suppression at `now_ms`; whether there was one.
    async fn lift_suppression(
        &self,
        tenant_id: &str,
        channel: Channel,
        address: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Suppressions in force matching `filter`, newest first, after `after`.
    async fn suppressions(
        &self,
        filter: &SuppressionFilter,
        after: Option<SuppressionCursor>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError>;
    /// Changes (lifts included) after `after`, oldest first, across
    /// tenants: what a node's copy of the lists follows.
    async fn suppression_changes(
        &self,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<SuppressionChange>, StoreError>;
}
