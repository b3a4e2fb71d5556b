//! `Receipts`: vendors' receipts applied to their deliveries (the API's
//! `POST /v1/receipts/{provider}`).

use async_trait::async_trait;

use super::StoreError;
use crate::model::Channel;
use crate::receipt::VendorReceipt;

/// What became of one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptApplied {
    /// No such delivery (never Herald's, or purged since).
    Unknown,
    /// The delivery's (tenant's, channel's); `changed`: whether it moved
    /// the delivery on (false for a repeat, or news of lower rank than it
    /// has heard already).
    Found {
        tenant_id: String,
        notification_id: uuid::Uuid,
        channel: Channel,
        changed: bool,
    },
}

#[async_trait]
pub trait Receipts: Send + Sync {
    /// Applies receipts from account `provider`, received at `now_ms`: each
    /// goes in its delivery's timeline (once, however often it comes), and
    /// the delivery takes its state if it outranks what the delivery has
    /// heard — at once when the delivery is sent, or when its send is
    /// recorded if the receipt came first.
    async fn record_receipts(
        &self,
        provider: &str,
        receipts: Vec<VendorReceipt>,
        now_ms: i64,
    ) -> Result<Vec<ReceiptApplied>, StoreError>;
}
