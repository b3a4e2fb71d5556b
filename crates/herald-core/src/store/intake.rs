//! `Intake`: notifications in (the API), and read back (the status API).

use async_trait::async_trait;

use super::StoreError;
use crate::model::{Channel, DeliveryState, NotificationRequest};

/// One delivery to create with its notification.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: uuid::Uuid,
    pub channel: Channel,
    /// Push device index (0 for other channels).
    pub target: u32,
    /// Made in this final state at once, and why (`suppressed`: the
    /// recipient opted out of its category on its channel; `expired`: its
    /// quiet hours outlast its TTL): it is never sent.
    pub ended: Option<(crate::model::DeliveryState, String)>,
    /// Due then rather than when the notification is (the recipient's
    /// quiet hours).
    pub held_until_ms: Option<i64>,
    /// Made already leased to this node's workers, as its first attempt
    /// (`sending` under this lease, as a claim would leave it), to be
    /// handed to them in memory: the local bus's hand-off, which saves the
    /// store a claim (`crate::bus::Handoff`). Only for a delivery due at
    /// once and not ended; one a frequency cap suppresses is made
    /// suppressed, unleased.
    pub leased: Option<super::Leased>,
}

impl NewDelivery {
    /// The row it is made as, for a notification due at `due_at_ms`;
    /// `capped`: the reason, when the notification's frequency cap
    /// suppresses what it sends (decided in the store's transaction). One
    /// decision for every store: ended at once, it stays ended; else a cap
    /// suppresses it, unleased; else it is made leased (`sending`, its
    /// first attempt, due when the lease runs out) or queued (due when its
    /// quiet hours end, or with its notification).
    pub fn made<'a>(&'a self, due_at_ms: i64, capped: Option<&'a str>) -> Made<'a> {
        let due_at_ms = self.held_until_ms.unwrap_or(due_at_ms);
        match (&self.ended, capped, self.leased) {
            (Some((state, why)), ..) => Made {
                state: *state,
                reason: Some(why),
                due_at_ms,
                lease: None,
            },
            (None, Some(why), _) => Made {
                state: DeliveryState::Suppressed,
                reason: Some(why),
                due_at_ms,
                lease: None,
            },
            (None, None, Some(lease)) => Made {
                state: DeliveryState::Sending,
                reason: None,
                due_at_ms: lease.until_ms,
                lease: Some(lease),
            },
            (None, None, None) => Made {
                state: DeliveryState::Queued,
                reason: None,
                due_at_ms,
                lease: None,
            },
        }
    }
}

/// A new delivery's row as a store makes it (`NewDelivery::made`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made<'a> {
    pub state: DeliveryState,
    /// Why it was made ended (`last_error`).
    pub reason: Option<&'a str>,
    pub due_at_ms: i64,
    /// The lease it holds (`lease_token`; and its first attempt).
    pub lease: Option<super::Leased>,
}

impl Made<'_> {
    /// Attempts counted at creation: the leased one's first.
    pub fn attempts(&self) -> u32 {
        u32::from(self.lease.is_some())
    }
}

/// The response stored with an idempotency key, replayed on a repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// SHA-256 of the canonical request, to tell a replay from a conflict.
    pub request_hash: Vec<u8>,
    pub response: StoredResponse,
}

/// A notification to store durably, with its deliveries, in one transaction.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: uuid::Uuid,
    pub tenant_id: String,
    pub request: NotificationRequest,
    pub accepted_at_ms: i64,
    /// When the first attempt is due (`send_at`, or now).
    pub due_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub deliveries: Vec<NewDelivery>,
    /// Written in the same transaction; if the key is already taken nothing
    /// is written and the existing record is returned.
    pub idempotency: Option<(String, IdempotencyRecord)>,
    /// The request's correlation id (`x-request-id`) and W3C trace context,
    /// carried in the bus event's headers.
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    /// A frequency cap to count it against, in the same transaction.
    pub cap: Option<CapCheck>,
}

/// A tenant's cap on one recipient's notifications of one category: the
/// store counts those accepted within `window_ms` before this one; at
/// `max` already, every delivery of this one not already ended is created
/// `suppressed` (`frequency_cap: …`), else this one is counted. Counted
/// where the notifications are stored, so every API node counts together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapCheck {
    pub recipient_id: String,
    pub category: String,
    pub max: u32,
    pub window_ms: i64,
}

impl CapCheck {
    /// The reason a capped delivery gives.
    pub fn reason(&self) -> String {
        format!(
            "frequency_cap: at most {} {} per {} s to this recipient",
            self.max,
            self.category,
            self.window_ms / 1000
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateResult {
    Created,
    KeyTaken(IdempotencyRecord),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub at_ms: i64,
    pub provider: Option<String>,
    pub outcome: String,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: uuid::Uuid,
    pub channel: Channel,
    pub target: u32,
    pub state: DeliveryState,
    pub provider: Option<String>,
    pub vendor_message_id: Option<String>,
    pub last_error: Option<String>,
    pub sent_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub attempts: Vec<AttemptView>,
    /// What the vendor reported after it took the message, in order.
    pub receipts: Vec<ReceiptView>,
}

/// A receipt in a delivery's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptView {
    pub kind: crate::receipt::ReceiptKind,
    pub provider: String,
    /// When the vendor says it happened, and when Herald heard (Unix ms).
    pub at_ms: i64,
    pub received_at_ms: i64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NotificationView {
    pub id: uuid::Uuid,
    pub tenant_id: String,
    pub request: NotificationRequest,
    pub accepted_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub deliveries: Vec<DeliveryView>,
}

/// A delivery as a cancel left it: `cancelled` when the cancel ended it
/// (it was still queued or scheduled), else the state that kept it (a
/// worker held it, or it had finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledDelivery {
    pub id: uuid::Uuid,
    pub channel: crate::model::Channel,
    pub target: u32,
    pub state: crate::model::DeliveryState,
    pub cancelled: bool,
}

#[async_trait]
pub trait Intake: Send + Sync {
    /// Stores each notification with its deliveries, durably, before
    /// returning. A notification whose idempotency key its tenant already
    /// used (earlier, or earlier in this batch) is not stored: its result is
    /// the record that holds the key.
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError>;
    /// `None` when absent or owned by another tenant.
    async fn notification(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
    ) -> Result<Option<NotificationView>, StoreError>;
    /// Cancels what of a notification has not gone out: each delivery
    /// still queued or scheduled (for `send_at` or a retry) ends
    /// `cancelled`, in one step with the claims, so no worker takes it
    /// after; one a worker holds or that finished stays as it is. Every
    /// delivery as the cancel left it; `None` when the notification is
    /// absent or another tenant's.
    async fn cancel(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
        now_ms: i64,
    ) -> Result<Option<Vec<CancelledDelivery>>, StoreError>;
    /// A support search: the tenant's notifications to `address` (see
    /// `Recipient::has`) among its latest `scan` notifications, newest
    /// first, at most `limit`. Bounded by `scan`, not indexed: it costs
    /// nothing at acceptance and a bounded read when someone asks.
    async fn notifications_to(
        &self,
        tenant_id: &str,
        address: &str,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<uuid::Uuid>, StoreError>;
    /// The notification a tenant's idempotency key made, while the key is
    /// kept.
    async fn notification_for_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<uuid::Uuid>, StoreError>;
}
