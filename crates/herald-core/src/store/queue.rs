//! `Queue`: the delivery rows as the workers' queue — claimed under
//! leases, recorded by compare-and-set on the lease, given back.

use async_trait::async_trait;

use super::StoreError;
use crate::model::{Channel, DeliveryState, Priority};

/// Which deliveries a claim takes: up to `limit` due deliveries of one
/// channel and lane, under a lease of `lease_ms` from `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub channel: Channel,
    pub lane: Priority,
    pub limit: usize,
    pub now_ms: i64,
    pub lease_ms: i64,
    /// A `queued` delivery counts only once it has sat untouched since
    /// this time (`i64::MAX`: at once). Retries come due and run-out leases
    /// always count. The Kafka bus's sweep sets it: it picks up what Kafka
    /// will not bring (retries, a dead worker's leases, deliveries given
    /// back, events late or lost), not new work on its way through Kafka.
    pub settled_before_ms: i64,
}

impl Claim {
    /// A claim of new and due work alike.
    pub fn new(channel: Channel, lane: Priority, limit: usize, now_ms: i64, lease_ms: i64) -> Self {
        Self {
            channel,
            lane,
            limit,
            now_ms,
            lease_ms,
            settled_before_ms: i64::MAX,
        }
    }
}

/// Proves a lease: the store records a delivery's outcome, gives it back or
/// notes a call only with the token of its current lease, so a worker whose
/// lease was taken over cannot write over the new holder. Its own type, so
/// it is never passed where a time or a count is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub i64);

/// A lease a delivery is created under (`NewDelivery::leased`): its token,
/// and when it runs out (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub token: LeaseToken,
    pub until_ms: i64,
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
    pub lease_token: LeaseToken,
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
    /// The W3C `traceparent` the notification was accepted under, when
    /// tracing was on: the delivery's spans join that trace.
    pub traceparent: Option<String>,
}

impl ClaimedDelivery {
    /// A delivery just created leased (`NewDelivery::leased`), as its
    /// holder sees it: what a claim of it would have returned.
    /// `payload`: the notification's request as JSON.
    pub fn handed(
        n: &super::NewNotification,
        d: &super::NewDelivery,
        lease: Leased,
        payload: String,
    ) -> ClaimedDelivery {
        ClaimedDelivery {
            id: d.id,
            notification_id: n.id,
            tenant_id: n.tenant_id.clone(),
            channel: d.channel,
            target: d.target,
            priority: n.request.priority,
            attempt: 1,
            lease_token: lease.token,
            lease_until_ms: lease.until_ms,
            accepted_at_ms: n.accepted_at_ms,
            expires_at_ms: n.expires_at_ms,
            payload,
            pinned_provider: None,
            in_doubt: false,
            calling: None,
            traceparent: n.traceparent.clone(),
        }
    }
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
    /// Not sent: the address is on the tenant's suppression list (the
    /// record's error says why it was put there).
    Suppressed,
}

impl Next {
    pub fn state(&self) -> DeliveryState {
        match self {
            Next::Sent { .. } => DeliveryState::Sent,
            Next::RetryAt(_) | Next::Deferred(_) => DeliveryState::RetryScheduled,
            Next::Failed => DeliveryState::Failed,
            Next::Dead => DeliveryState::Dead,
            Next::Expired => DeliveryState::Expired,
            Next::Suppressed => DeliveryState::Suppressed,
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
    pub lease_token: LeaseToken,
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

#[async_trait]
pub trait Queue: Send + Sync {
    /// Moves up to `claim.limit` due deliveries to `sending` under a lease;
    /// an expired lease counts as due (and is taken over in doubt).
    async fn claim(&self, claim: Claim) -> Result<Vec<ClaimedDelivery>, StoreError>;
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
        leases: Vec<(uuid::Uuid, LeaseToken)>,
        started: bool,
    ) -> Result<(), StoreError>;
    /// Notes, before the call, that a leased delivery is about to go to a
    /// backup provider: if the holder dies mid-call, the next knows where
    /// the message may already be.
    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: LeaseToken,
        provider: &str,
    ) -> Result<(), StoreError>;
}

/// How many deliveries wait, and for how long, per channel and lane
/// (metrics; admission control).
#[async_trait]
pub trait Depths: Send + Sync {
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;
    /// Per channel and lane with deliveries due by `now_ms` and not yet
    /// taken (queued or retry scheduled): how many, and when the one due
    /// longest was due.
    async fn oldest_due(&self, now_ms: i64) -> Result<Vec<LaneLag>, StoreError>;
    /// For admission control, each of `lanes`, answered in their order:
    /// when its longest-waiting due delivery was due (waiting, or leased
    /// past its lease, by `now_ms`), and its due and held deliveries, each
    /// counted only up to the ask's `up_to`. A judge needs no more than
    /// changes its verdict, and counting a backlog of millions on every
    /// refresh would cost more than the deliveries it guards. A database
    /// answers every lane in one statement: the judge reads every lane of
    /// every channel four times a second.
    async fn lane_queues(
        &self,
        now_ms: i64,
        lanes: &[LaneAsk],
    ) -> Result<Vec<LaneQueue>, StoreError>;
}

/// One lane for `Depths::lane_queues`, and how far to count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneAsk {
    pub channel: Channel,
    pub lane: Priority,
    pub up_to: CountUpTo,
}

/// How far `Depths::lane_queues` counts a lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountUpTo {
    pub due: u64,
    pub waiting: u64,
}

/// A lane's queue as `Depths::lane_queues` counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneQueue {
    /// None when nothing is due.
    pub oldest_due_at_ms: Option<i64>,
    /// Due and not taken, up to `CountUpTo::due`.
    pub due: u64,
    /// Held (queued, retry scheduled or leased), up to `CountUpTo::waiting`.
    pub waiting: u64,
}

/// A lane's lag: `due` deliveries are due and waiting, the longest-waiting
/// since `oldest_due_at_ms` (so it has waited `now - oldest_due_at_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLag {
    pub channel: Channel,
    pub priority: Priority,
    pub oldest_due_at_ms: i64,
    pub due: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub channel: Channel,
    pub priority: Priority,
    pub pending: u64,
}
