//! The `Store` extension point: Herald's durable state. SQLite now,
//! PostgreSQL next; both must give the same semantics (one behavioural suite).

use async_trait::async_trait;

use crate::events::OutboxEvent;
use crate::model::{Channel, DeliveryState, NotificationRequest, Priority};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Down, unreachable, out of disk, too slow: nothing is wrong with the
    /// operation, and it may succeed once the store is back.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    /// The store refused this operation itself (a constraint it breaks):
    /// trying it again will not help.
    #[error("the store refused the operation: {0}")]
    Rejected(String),
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    /// Whether the store, not the operation, is at fault: the same
    /// operation may succeed later.
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}

/// One delivery to create with its notification.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: uuid::Uuid,
    pub channel: Channel,
    /// Push device index (0 for other channels).
    pub target: u32,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateResult {
    Created,
    KeyTaken(IdempotencyRecord),
}

/// A delivery a worker now holds under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// Also the stable vendor idempotency key.
    pub id: uuid::Uuid,
    pub notification_id: uuid::Uuid,
    pub tenant_id: String,
    pub channel: Channel,
    pub target: u32,
    pub priority: Priority,
    /// The number of this attempt, from 1.
    pub attempt: u32,
    /// Proves the lease: results are recorded only with the current token.
    pub lease_token: i64,
    /// When the lease runs out (the claimer's clock): from then on another
    /// worker may take the delivery over, so no vendor call may still be
    /// running (`crate::lease`).
    pub lease_until_ms: i64,
    pub accepted_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// The notification request as JSON.
    pub payload: String,
    /// Set when an earlier attempt's outcome was ambiguous and the lane may
    /// not fail over from it: every attempt goes to this provider.
    pub pinned_provider: Option<String>,
    /// This claim takes over from a holder that may have been mid-call (its
    /// lease expired, or it was released at shutdown): the provider it was
    /// calling may hold the message already.
    pub in_doubt: bool,
    /// The backup provider the last holder noted it was calling, if any (a
    /// call to the primary is not noted: it is the one tried first anyway).
    pub calling: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Sent {
        vendor_id: Option<String>,
    },
    RetryAt(i64),
    /// Not tried at all (every usable circuit open, or the vendor's send
    /// rate used up): due again at this time, and the attempt does not count.
    Deferred(i64),
    Failed,
    Dead,
    Expired,
}

impl Next {
    pub fn state(&self) -> DeliveryState {
        match self {
            Next::Sent { .. } => DeliveryState::Sent,
            Next::RetryAt(_) | Next::Deferred(_) => DeliveryState::RetryScheduled,
            Next::Failed => DeliveryState::Failed,
            Next::Dead => DeliveryState::Dead,
            Next::Expired => DeliveryState::Expired,
        }
    }
}

/// One request to one vendor within an attempt (failover makes several).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub provider: String,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub outcome: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// One attempt's result (a claim, and the vendor calls made under it),
/// recorded together with the delivery's next state.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: uuid::Uuid,
    pub lease_token: i64,
    pub attempt: u32,
    /// In order; empty when no vendor was called (expired, deferred, or the
    /// message could not be built).
    pub calls: Vec<CallRecord>,
    /// Why the delivery is not sent yet or ended as it did.
    pub error: Option<String>,
    /// The provider later attempts must stay with (an ambiguous outcome the
    /// lane may not fail over from); kept once set.
    pub pin: Option<String>,
    /// When the attempt ended.
    pub ended_at_ms: i64,
    pub next: Next,
}

impl AttemptRecord {
    /// The provider the delivery last went to.
    pub fn provider(&self) -> Option<&str> {
        self.calls.last().map(|c| c.provider.as_str())
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub channel: Channel,
    pub priority: Priority,
    pub pending: u64,
}

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
pub trait Store: Send + Sync + 'static {
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
    /// Moves up to `limit` due deliveries of one channel and lane to
    /// `sending` under a lease of `lease_ms`; an expired lease counts as due.
    async fn claim(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.sweep(channel, priority, limit, now_ms, lease_ms, i64::MAX)
            .await
    }
    /// `claim`, except that a `queued` delivery counts only once it has sat
    /// untouched since `settled_before_ms`; retries come due and run-out
    /// leases count at once. The Kafka bus's sweep: it picks up what Kafka
    /// will not bring (retries, a dead worker's leases, deliveries given
    /// back, events late or lost), not new work on its way through Kafka.
    async fn sweep(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
        settled_before_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Moves these deliveries to `sending` under a lease of `lease_ms`, each
    /// only if it is waiting and due (queued, a retry come due, or a lease
    /// run out); the others are left as they are and not returned. How a
    /// bus consumer takes the deliveries an event names: an event delivered
    /// twice sends once.
    async fn claim_ids(
        &self,
        ids: Vec<uuid::Uuid>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records attempts and moves each delivery on, if its lease still holds.
    async fn record(&self, attempts: Vec<AttemptRecord>) -> Result<(), StoreError>;
    /// Gives leased deliveries back (`sending → queued`) without an attempt.
    /// `started`: a call may have begun (a worker was cut short at
    /// shutdown), so the next holder takes each over in doubt; false for
    /// deliveries never handed to a worker (a bus's buffer).
    async fn release(
        &self,
        leases: Vec<(uuid::Uuid, i64)>,
        started: bool,
    ) -> Result<(), StoreError>;
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;
    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError>;
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
    /// Notes, before the call, that a leased delivery is about to go to a
    /// backup provider: if the holder dies mid-call, the next knows where
    /// the message may already be.
    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: i64,
        provider: &str,
    ) -> Result<(), StoreError>;
    /// Moves waiting deliveries (queued, retry scheduled) whose notification
    /// expired by `now_ms` to `expired`; returns how many.
    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError>;
    /// Deletes up to `limit` notifications accepted before `before_ms` whose
    /// deliveries have all finished (sent, failed, dead, expired…), with
    /// their deliveries, attempts and idempotency keys; returns how many.
    async fn purge_finished(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
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
    /// A tenant's id by its name.
    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// The tenant that owns an API key (by its SHA-256).
    async fn tenant_for_key(&self, key_hash: &[u8]) -> Result<Option<String>, StoreError>;
    /// Creates the tenant if needed and adds a key to it; returns the tenant id.
    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        label: &str,
    ) -> Result<String, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}
