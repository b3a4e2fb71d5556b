//! The store in memory: every role, with the same meaning as the databases
//! (the behavioural suite runs against it too) — leases and their
//! compare-and-set, in-doubt takeovers, idempotency keys per tenant, the
//! claim order, the outbox order — and nothing durable. For tests of the
//! engine and the API that need a real store but no I/O.
//!
//! Each call takes one lock and leaves everything consistent, as a
//! transaction would.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use herald_core::events::OutboxEvent;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::receipt::{ReceiptKind, VendorReceipt};
use herald_core::store::{
    AttemptRecord, AttemptView, Cause, Claim, ClaimedDelivery, CreateResult, DeadLetter,
    DeadLetterCursor, DeadLetterFilter, DeadLetters, DeliverySummary, DeliveryView, Depths, Health,
    IdempotencyRecord, Intake, LaneAsk, LaneLag, LaneQueue, LeaseToken, NewNotification,
    NotificationView, Outbox, Queue, QueueDepth, ReplayOutcome, Reports, StoreError, Tenants,
    Upkeep,
};
use herald_core::store::{
    ChangeCursor, SuppressionChange, SuppressionCursor, SuppressionFilter, Suppressions,
};
use herald_core::store::{CircuitHold, Circuits, KeyGrant, Scopes};
use herald_core::store::{ReceiptApplied, ReceiptView, Receipts};
use herald_core::suppression::Suppression;

use crate::writes::{v7_floor, OutboxRow, RowChange};

/// The store in memory. `outbox`: creates also write outbox events (as a
/// database store does when the bus is Kafka).
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    outbox: bool,
}

#[derive(Default)]
struct State {
    notifications: BTreeMap<uuid::Uuid, Notification>,
    deliveries: BTreeMap<uuid::Uuid, Delivery>,
    /// In the order they were made (ties in a claim's order go to the
    /// older delivery, as a database's row order would).
    made: u64,
    attempts: Vec<(uuid::Uuid, AttemptView)>,
    keys: HashMap<(String, String), IdempotencyRecord>,
    outbox: BTreeMap<i64, (OutboxEvent, Option<i64>, i64)>,
    relay: Option<(String, i64)>,
    tenants: HashMap<String, String>,
    api_keys: HashMap<Vec<u8>, KeyGrant>,
    circuit_holds: std::collections::BTreeMap<String, CircuitHold>,
    /// Tenants' callbacks, by tenant id.
    callbacks: HashMap<String, herald_core::store::Callback>,
    tenant_preferences: HashMap<String, herald_core::recipient::TenantPreferences>,
    /// (tenant, recipient, category) → acceptance times counted.
    cap_events: HashMap<(String, String, String), Vec<i64>>,
    /// (tenant, recipient id) → profile.
    recipients: HashMap<(String, String), herald_core::recipient::StoredRecipient>,
    /// Every distinct receipt, by delivery.
    receipts: Vec<(uuid::Uuid, ReceiptView)>,
    /// By (tenant, channel, address): the entry and when it was lifted.
    suppressions: BTreeMap<(String, Channel, String), (SuppressionChange, Option<i64>)>,
}

struct Notification {
    tenant_id: String,
    request: NotificationRequest,
    payload: String,
    accepted_at_ms: i64,
    expires_at_ms: Option<i64>,
    key: Option<String>,
    traceparent: Option<String>,
}

struct Delivery {
    made: u64,
    notification_id: uuid::Uuid,
    channel: Channel,
    target: u32,
    priority: Priority,
    state: DeliveryState,
    due_at_ms: i64,
    updated_at_ms: i64,
    /// Its notification's expiry.
    expires_at_ms: Option<i64>,
    lease_token: Option<LeaseToken>,
    attempts: u32,
    provider: Option<String>,
    vendor_message_id: Option<String>,
    last_error: Option<String>,
    sent_at_ms: Option<i64>,
    pinned_provider: Option<String>,
    calling: Option<String>,
    in_doubt: bool,
    /// The highest-ranked receipt heard.
    receipt: Option<ReceiptKind>,
}

impl Delivery {
    fn waiting(&self) -> bool {
        matches!(
            self.state,
            DeliveryState::Queued | DeliveryState::RetryScheduled
        )
    }

    /// Waiting or leased: work a claim may take once due.
    fn pending(&self) -> bool {
        self.waiting() || self.state == DeliveryState::Sending
    }
}

impl MemoryStore {
    pub fn new(outbox: bool) -> Self {
        Self {
            state: Mutex::default(),
            outbox,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing holding the lock panics midway; a poisoned lock is sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Leases `ids` (each already found claimable) until `now + lease`.
    fn lease(&mut self, ids: &[uuid::Uuid], now_ms: i64, lease_ms: i64) -> Vec<ClaimedDelivery> {
        let token = LeaseToken(rand::random());
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(d) = self.deliveries.get_mut(id) else {
                continue;
            };
            d.in_doubt |= d.state == DeliveryState::Sending;
            d.state = DeliveryState::Sending;
            d.due_at_ms = now_ms + lease_ms;
            d.lease_token = Some(token);
            d.attempts += 1;
            d.updated_at_ms = now_ms;
            let Some(n) = self.notifications.get(&d.notification_id) else {
                continue;
            };
            out.push(ClaimedDelivery {
                id: *id,
                notification_id: d.notification_id,
                tenant_id: n.tenant_id.clone(),
                channel: d.channel,
                target: d.target,
                priority: d.priority,
                attempt: d.attempts,
                lease_token: token,
                lease_until_ms: now_ms + lease_ms,
                accepted_at_ms: n.accepted_at_ms,
                expires_at_ms: n.expires_at_ms,
                payload: n.payload.clone(),
                pinned_provider: d.pinned_provider.clone(),
                in_doubt: d.in_doubt,
                calling: d.calling.clone(),
                traceparent: n.traceparent.clone(),
            });
        }
        out
    }

    fn tenant_of(&self, d: &Delivery) -> Option<&str> {
        self.notifications
            .get(&d.notification_id)
            .map(|n| n.tenant_id.as_str())
    }

    /// Dead letters matching `f`, oldest death first, as (id, delivery).
    fn dead(&self, f: &DeadLetterFilter) -> Vec<(uuid::Uuid, &Delivery)> {
        let mut dead: Vec<(uuid::Uuid, &Delivery)> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.state == DeliveryState::Dead)
            .filter(|(_, d)| {
                f.tenant_id
                    .as_deref()
                    .is_none_or(|t| self.tenant_of(d) == Some(t))
            })
            .filter(|(_, d)| f.channel.is_none_or(|c| d.channel == c))
            .filter(|(_, d)| {
                f.provider
                    .as_deref()
                    .is_none_or(|p| d.provider.as_deref() == Some(p))
            })
            .filter(|(_, d)| f.since_ms.is_none_or(|s| d.updated_at_ms >= s))
            .filter(|(_, d)| f.until_ms.is_none_or(|u| d.updated_at_ms < u))
            .map(|(id, d)| (*id, d))
            .collect();
        dead.sort_by_key(|(id, d)| (d.updated_at_ms, *id));
        dead
    }

    fn replay(&mut self, id: uuid::Uuid, now_ms: i64) {
        if let Some(d) = self.deliveries.get_mut(&id) {
            d.state = DeliveryState::Queued;
            d.due_at_ms = now_ms;
            d.attempts = 0;
            d.lease_token = None;
            d.updated_at_ms = now_ms;
        }
    }
}

#[async_trait]
impl Intake for MemoryStore {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError> {
        let mut s = self.lock();
        // All or nothing, as one transaction: check before changing. A
        // notification whose key is held already is not stored, so only the
        // others must be new.
        let mut keys_seen = std::collections::HashSet::new();
        for n in &batch {
            if let Some((key, _)) = &n.idempotency {
                let k = (n.tenant_id.clone(), key.clone());
                if s.keys.contains_key(&k) || !keys_seen.insert(k) {
                    continue;
                }
            }
            if s.notifications.contains_key(&n.id)
                || n.deliveries
                    .iter()
                    .any(|d| s.deliveries.contains_key(&d.id))
            {
                return Err(StoreError::Rejected(
                    format!(
                        "notification {} or one of its deliveries exists already",
                        n.id
                    )
                    .into(),
                ));
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for n in batch {
            if let Some((key, rec)) = &n.idempotency {
                let k = (n.tenant_id.clone(), key.clone());
                if let Some(held) = s.keys.get(&k) {
                    results.push(CreateResult::KeyTaken(held.clone()));
                    continue;
                }
                s.keys.insert(k, rec.clone());
            }
            let payload = serde_json::to_string(&n.request)
                .map_err(|e| StoreError::Corrupt(Cause::new("request does not serialize", e)))?;
            if self.outbox {
                let row = OutboxRow::of(&n)?;
                let seq = s.outbox.keys().next_back().map_or(1, |s| s + 1);
                let lane = Priority::from_index(row.lane).unwrap_or_default();
                let event = OutboxEvent {
                    seq,
                    lane,
                    key: row.key,
                    tenant_id: n.tenant_id.clone(),
                    correlation_id: n.correlation_id.clone(),
                    traceparent: n.traceparent.clone(),
                    payload: row.payload,
                    created_at_ms: n.accepted_at_ms,
                };
                s.outbox.insert(seq, (event, None, n.accepted_at_ms));
            }
            let capped = n.cap.as_ref().and_then(|cap| {
                let key = (
                    n.tenant_id.clone(),
                    cap.recipient_id.clone(),
                    cap.category.clone(),
                );
                let counted = s.cap_events.entry(key).or_default();
                counted.retain(|at| *at > n.accepted_at_ms - cap.window_ms);
                if counted.len() >= cap.max as usize {
                    Some(cap.reason())
                } else {
                    counted.push(n.accepted_at_ms);
                    None
                }
            });
            for d in &n.deliveries {
                let row = d.made(n.due_at_ms, capped.as_deref());
                s.made += 1;
                let made = s.made;
                s.deliveries.insert(
                    d.id,
                    Delivery {
                        made,
                        notification_id: n.id,
                        channel: d.channel,
                        target: d.target,
                        priority: n.request.priority,
                        state: row.state,
                        due_at_ms: row.due_at_ms,
                        updated_at_ms: n.accepted_at_ms,
                        expires_at_ms: n.expires_at_ms,
                        lease_token: row.lease.map(|l| l.token),
                        attempts: row.attempts(),
                        provider: None,
                        vendor_message_id: None,
                        last_error: row.reason.map(str::to_owned),
                        sent_at_ms: None,
                        pinned_provider: None,
                        calling: None,
                        in_doubt: false,
                        receipt: None,
                    },
                );
            }
            s.notifications.insert(
                n.id,
                Notification {
                    tenant_id: n.tenant_id,
                    request: n.request,
                    payload,
                    accepted_at_ms: n.accepted_at_ms,
                    expires_at_ms: n.expires_at_ms,
                    key: n.idempotency.map(|(k, _)| k),
                    traceparent: n.traceparent,
                },
            );
            results.push(CreateResult::Created);
        }
        Ok(results)
    }

    async fn cancel(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
        now_ms: i64,
    ) -> Result<Option<Vec<herald_core::store::CancelledDelivery>>, StoreError> {
        let mut s = self.lock();
        if s.notifications.get(&id).map(|n| n.tenant_id.as_str()) != Some(tenant_id) {
            return Ok(None);
        }
        let mut out: Vec<herald_core::store::CancelledDelivery> = s
            .deliveries
            .iter_mut()
            .filter(|(_, d)| d.notification_id == id)
            .map(|(did, d)| {
                let cancel = matches!(
                    d.state,
                    DeliveryState::Queued | DeliveryState::RetryScheduled
                );
                if cancel {
                    d.state = DeliveryState::Cancelled;
                    d.last_error = Some("cancelled before it was sent".into());
                    d.lease_token = None;
                    d.updated_at_ms = now_ms;
                }
                herald_core::store::CancelledDelivery {
                    id: *did,
                    channel: d.channel,
                    target: d.target,
                    state: d.state,
                    cancelled: cancel,
                }
            })
            .collect();
        out.sort_by_key(|d| (d.channel.as_str(), d.target));
        Ok(Some(out))
    }

    async fn notifications_to(
        &self,
        tenant_id: &str,
        address: &str,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<uuid::Uuid>, StoreError> {
        let s = self.lock();
        Ok(s.notifications
            .iter()
            .rev()
            .filter(|(_, n)| n.tenant_id == tenant_id)
            .take(scan)
            .filter(|(_, n)| n.request.recipient.has(address))
            .map(|(id, _)| *id)
            .take(limit)
            .collect())
    }

    async fn notification_for_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<uuid::Uuid>, StoreError> {
        let s = self.lock();
        let Some(rec) = s.keys.get(&(tenant_id.to_owned(), key.to_owned())) else {
            return Ok(None);
        };
        crate::writes::notification_in(&rec.response.body)
    }

    async fn notification(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
    ) -> Result<Option<NotificationView>, StoreError> {
        let s = self.lock();
        let Some(n) = s
            .notifications
            .get(&id)
            .filter(|n| n.tenant_id == tenant_id)
        else {
            return Ok(None);
        };
        let mut deliveries: Vec<(&uuid::Uuid, &Delivery)> = s
            .deliveries
            .iter()
            .filter(|(_, d)| d.notification_id == id)
            .collect();
        deliveries.sort_by_key(|(_, d)| (d.channel.as_str(), d.target));
        let views = deliveries
            .into_iter()
            .map(|(did, d)| {
                let mut attempts: Vec<AttemptView> = s
                    .attempts
                    .iter()
                    .filter(|(a, _)| a == did)
                    .map(|(_, v)| v.clone())
                    .collect();
                attempts.sort_by_key(|a| (a.at_ms, a.attempt));
                let mut receipts: Vec<ReceiptView> = s
                    .receipts
                    .iter()
                    .filter(|(r, _)| r == did)
                    .map(|(_, v)| v.clone())
                    .collect();
                receipts.sort_by_key(|r| (r.at_ms, r.kind.rank()));
                DeliveryView {
                    id: *did,
                    channel: d.channel,
                    target: d.target,
                    state: d.state,
                    provider: d.provider.clone(),
                    vendor_message_id: d.vendor_message_id.clone(),
                    last_error: d.last_error.clone(),
                    sent_at_ms: d.sent_at_ms,
                    updated_at_ms: d.updated_at_ms,
                    attempts,
                    receipts,
                }
            })
            .collect();
        Ok(Some(NotificationView {
            id,
            tenant_id: n.tenant_id.clone(),
            request: n.request.clone(),
            accepted_at_ms: n.accepted_at_ms,
            expires_at_ms: n.expires_at_ms,
            deliveries: views,
        }))
    }
}

#[async_trait]
impl Queue for MemoryStore {
    async fn claim(&self, c: Claim) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut s = self.lock();
        let mut due: Vec<(i64, u64, uuid::Uuid)> = s
            .deliveries
            .iter()
            .filter(|(_, d)| d.channel == c.channel && d.priority == c.lane)
            .filter(|(_, d)| d.pending() && d.due_at_ms <= c.now_ms)
            .filter(|(_, d)| {
                d.state != DeliveryState::Queued || d.updated_at_ms <= c.settled_before_ms
            })
            .map(|(id, d)| (d.due_at_ms, d.made, *id))
            .collect();
        due.sort_unstable();
        let ids: Vec<uuid::Uuid> = due.into_iter().take(c.limit).map(|(.., id)| id).collect();
        Ok(s.lease(&ids, c.now_ms, c.lease_ms))
    }

    async fn claim_ids(
        &self,
        ids: Vec<uuid::Uuid>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut s = self.lock();
        let due: Vec<uuid::Uuid> = ids
            .into_iter()
            .filter(|id| {
                s.deliveries
                    .get(id)
                    .is_some_and(|d| d.pending() && d.due_at_ms <= now_ms)
            })
            .collect();
        Ok(s.lease(&due, now_ms, lease_ms))
    }

    async fn record(&self, attempts: Vec<AttemptRecord>) -> Result<(), StoreError> {
        // Refused as a whole, as a transaction would be, before any change.
        let outcomes = attempts
            .iter()
            .map(RowChange::of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut s = self.lock();
        for (r, o) in attempts.iter().zip(outcomes) {
            for c in &r.calls {
                s.attempts.push((
                    r.delivery_id,
                    AttemptView {
                        attempt: r.attempt,
                        at_ms: c.started_at_ms,
                        provider: Some(c.provider.clone()),
                        outcome: c.outcome.clone(),
                        status_code: c.status_code,
                        latency_ms: c.latency_ms,
                        error: c.error.clone(),
                    },
                ));
            }
            let Some(d) = s.deliveries.get_mut(&r.delivery_id) else {
                continue;
            };
            // Compare-and-set on the lease.
            if d.state != DeliveryState::Sending || d.lease_token != Some(r.lease_token) {
                continue;
            }
            d.state = o.state.parse().map_err(|_| {
                StoreError::Corrupt(format!("delivery {}: state {}", r.delivery_id, o.state).into())
            })?;
            // A receipt heard before the send was recorded.
            if let (DeliveryState::Sent, Some(k)) = (d.state, d.receipt) {
                d.state = k.state();
            }
            d.due_at_ms = o.due_at_ms;
            d.lease_token = None;
            d.attempts = d
                .attempts
                .saturating_sub(u32::try_from(o.uncount).unwrap_or(0));
            if let Some(p) = r.provider() {
                d.provider = Some(p.to_owned());
            }
            if let Some(v) = o.vendor_id {
                d.vendor_message_id = Some(v.to_owned());
            }
            d.last_error = r.error.clone();
            d.sent_at_ms = o.sent_at_ms.or(d.sent_at_ms);
            d.updated_at_ms = r.ended_at_ms;
            if d.pinned_provider.is_none() {
                d.pinned_provider = r.pin.clone();
            }
            d.calling = None;
            d.in_doubt = false;
        }
        Ok(())
    }

    async fn release(
        &self,
        leases: Vec<(uuid::Uuid, LeaseToken)>,
        started: bool,
    ) -> Result<(), StoreError> {
        let now = herald_core::now_ms();
        let mut s = self.lock();
        for (id, token) in leases {
            if let Some(d) = s.deliveries.get_mut(&id) {
                if d.state == DeliveryState::Sending && d.lease_token == Some(token) {
                    d.state = DeliveryState::Queued;
                    d.due_at_ms = now;
                    d.lease_token = None;
                    d.attempts = d.attempts.saturating_sub(1);
                    d.updated_at_ms = now;
                    d.in_doubt |= started;
                }
            }
        }
        Ok(())
    }

    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: LeaseToken,
        provider: &str,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        if let Some(d) = s.deliveries.get_mut(&id) {
            if d.state == DeliveryState::Sending && d.lease_token == Some(lease_token) {
                d.calling = Some(provider.to_owned());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Depths for MemoryStore {
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let s = self.lock();
        let mut counts: BTreeMap<(Channel, Priority), u64> = BTreeMap::new();
        for d in s.deliveries.values().filter(|d| d.pending()) {
            *counts.entry((d.channel, d.priority)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((channel, priority), pending)| QueueDepth {
                channel,
                priority,
                pending,
            })
            .collect())
    }

    async fn oldest_due(&self, now_ms: i64) -> Result<Vec<LaneLag>, StoreError> {
        let s = self.lock();
        let mut oldest: BTreeMap<(Channel, Priority), (i64, u64)> = BTreeMap::new();
        for d in s.deliveries.values() {
            // Leased past its lease is due again (as the SQL stores count).
            if d.pending() && d.due_at_ms <= now_ms {
                let (at, n) = oldest
                    .entry((d.channel, d.priority))
                    .or_insert((d.due_at_ms, 0));
                *at = (*at).min(d.due_at_ms);
                *n += 1;
            }
        }
        Ok(oldest
            .into_iter()
            .map(|((channel, priority), (oldest_due_at_ms, due))| LaneLag {
                channel,
                priority,
                oldest_due_at_ms,
                due,
            })
            .collect())
    }

    async fn lane_queues(
        &self,
        now_ms: i64,
        lanes: &[LaneAsk],
    ) -> Result<Vec<LaneQueue>, StoreError> {
        let s = self.lock();
        Ok(lanes
            .iter()
            .map(|ask| {
                let mut q = LaneQueue::default();
                for d in s.deliveries.values() {
                    if d.channel != ask.channel || d.priority != ask.lane || !d.pending() {
                        continue;
                    }
                    q.waiting = (q.waiting + 1).min(ask.up_to.waiting);
                    if d.due_at_ms <= now_ms {
                        q.due = (q.due + 1).min(ask.up_to.due);
                        q.oldest_due_at_ms = Some(
                            q.oldest_due_at_ms
                                .map_or(d.due_at_ms, |o| o.min(d.due_at_ms)),
                        );
                    }
                }
                q
            })
            .collect())
    }
}

#[async_trait]
impl Upkeep for MemoryStore {
    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let mut n = 0;
        for d in s.deliveries.values_mut() {
            if d.waiting() && d.expires_at_ms.is_some_and(|e| e <= now_ms) {
                d.state = DeliveryState::Expired;
                d.last_error = Some("expired before it could be sent".into());
                d.updated_at_ms = now_ms;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn purge_finished(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let floor = v7_floor(before_ms);
        let finished: Vec<uuid::Uuid> = s
            .notifications
            .keys()
            .copied()
            .filter(|id| *id < floor)
            .filter(|id| {
                !s.deliveries
                    .values()
                    .any(|d| d.notification_id == *id && d.pending())
            })
            .take(limit)
            .collect();
        for id in &finished {
            let gone: Vec<uuid::Uuid> = s
                .deliveries
                .iter()
                .filter(|(_, d)| d.notification_id == *id)
                .map(|(did, _)| *did)
                .collect();
            s.attempts.retain(|(d, _)| !gone.contains(d));
            s.receipts.retain(|(d, _)| !gone.contains(d));
            for d in gone {
                s.deliveries.remove(&d);
            }
            if let Some(n) = s.notifications.remove(id) {
                if let Some(k) = n.key {
                    s.keys.remove(&(n.tenant_id, k));
                }
            }
        }
        let published: Vec<i64> = s
            .outbox
            .iter()
            .filter(|(_, (_, published, created))| published.is_some() && *created < before_ms)
            .map(|(seq, _)| *seq)
            .take(limit)
            .collect();
        s.suppressions
            .retain(|_, (_, lifted)| lifted.is_none_or(|at| at >= before_ms));
        for seq in published {
            s.outbox.remove(&seq);
        }
        Ok(finished.len() as u64)
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn relay_lease(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let free = match &s.relay {
            None => true,
            Some((h, until)) => h == holder || *until < now_ms,
        };
        if free {
            s.relay = Some((holder.to_owned(), now_ms + lease_ms));
        }
        Ok(free)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let s = self.lock();
        let mut pending: Vec<&OutboxEvent> = s
            .outbox
            .values()
            .filter(|(_, published, _)| published.is_none())
            .map(|(e, ..)| e)
            .collect();
        pending.sort_by_key(|e| (e.lane, e.seq));
        Ok(pending.into_iter().take(limit).cloned().collect())
    }

    async fn outbox_published(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        let now = herald_core::now_ms();
        let mut s = self.lock();
        for seq in seqs {
            if let Some((_, published, _)) = s.outbox.get_mut(&seq) {
                *published = Some(now);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl DeadLetters for MemoryStore {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let s = self.lock();
        Ok(s.dead(filter)
            .into_iter()
            .filter(|(id, d)| after.is_none_or(|c| (d.updated_at_ms, *id) > (c.dead_at_ms, c.id)))
            .take(limit)
            .filter_map(|(id, d)| {
                let n = s.notifications.get(&d.notification_id)?;
                Some(DeadLetter {
                    id,
                    notification_id: d.notification_id,
                    tenant_id: n.tenant_id.clone(),
                    channel: d.channel,
                    target: d.target,
                    priority: d.priority,
                    provider: d.provider.clone(),
                    attempts: d.attempts,
                    last_error: d.last_error.clone(),
                    dead_at_ms: d.updated_at_ms,
                    accepted_at_ms: n.accepted_at_ms,
                })
            })
            .collect())
    }

    async fn replay_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: uuid::Uuid,
    ) -> Result<ReplayOutcome, StoreError> {
        let mut s = self.lock();
        let Some(d) = s.deliveries.get(&id) else {
            return Ok(ReplayOutcome::NotFound);
        };
        if tenant_id.is_some_and(|t| s.tenant_of(d) != Some(t)) {
            return Ok(ReplayOutcome::NotFound);
        }
        if d.state != DeliveryState::Dead {
            return Ok(ReplayOutcome::NotDead(d.state));
        }
        s.replay(id, herald_core::now_ms());
        Ok(ReplayOutcome::Replayed)
    }

    async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let ids: Vec<uuid::Uuid> = s
            .dead(filter)
            .into_iter()
            .take(limit)
            .map(|(id, _)| id)
            .collect();
        let now = herald_core::now_ms();
        for id in &ids {
            s.replay(*id, now);
        }
        Ok(ids.len() as u64)
    }
}

#[async_trait]
impl herald_core::store::Recipients for MemoryStore {
    async fn put_recipient(
        &self,
        tenant_id: &str,
        id: &str,
        profile: herald_core::recipient::Profile,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<herald_core::store::PutRecipient, StoreError> {
        use herald_core::store::PutRecipient;
        let mut s = self.lock();
        let key = (tenant_id.to_owned(), id.to_owned());
        let current = s.recipients.get(&key).map_or(0, |r| r.version);
        if if_version.is_some_and(|v| v != current) {
            return Ok(PutRecipient::Conflict);
        }
        let version = current + 1;
        let preferences = s
            .recipients
            .get(&key)
            .map(|r| r.preferences.clone())
            .unwrap_or_default();
        s.recipients.insert(
            key,
            herald_core::recipient::StoredRecipient {
                id: id.to_owned(),
                profile,
                preferences,
                version,
                updated_at_ms: now_ms,
            },
        );
        Ok(PutRecipient::Written {
            version,
            created: current == 0,
        })
    }

    async fn put_recipients(
        &self,
        tenant_id: &str,
        batch: Vec<(String, herald_core::recipient::Profile)>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let batch = crate::writes::last_of_each(batch);
        let n = batch.len();
        for (id, profile) in batch {
            self.put_recipient(tenant_id, &id, profile, None, now_ms)
                .await?;
        }
        Ok(n)
    }

    async fn recipients(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<herald_core::recipient::StoredRecipient>, StoreError> {
        let s = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| s.recipients.get(&(tenant_id.to_owned(), id.clone())))
            .cloned()
            .collect())
    }

    async fn set_preferences(
        &self,
        tenant_id: &str,
        id: &str,
        preferences: herald_core::recipient::Preferences,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut s = self.lock();
        match s.recipients.get_mut(&(tenant_id.to_owned(), id.to_owned())) {
            Some(r) if if_version.is_none_or(|v| v == r.version) => {
                r.preferences = preferences;
                r.version += 1;
                r.updated_at_ms = now_ms;
                Ok(Some(r.version))
            }
            _ => Ok(None),
        }
    }

    async fn tenant_preferences(
        &self,
        tenant_id: &str,
    ) -> Result<herald_core::recipient::TenantPreferences, StoreError> {
        Ok(self
            .lock()
            .tenant_preferences
            .get(tenant_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_tenant_preferences(
        &self,
        tenant_id: &str,
        preferences: herald_core::recipient::TenantPreferences,
    ) -> Result<(), StoreError> {
        self.lock()
            .tenant_preferences
            .insert(tenant_id.to_owned(), preferences);
        Ok(())
    }

    async fn delete_recipient(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<herald_core::recipient::StoredRecipient>, StoreError> {
        let mut s = self.lock();
        s.cap_events
            .retain(|(t, r, _), _| !(t == tenant_id && r == id));
        Ok(s.recipients.remove(&(tenant_id.to_owned(), id.to_owned())))
    }
}

#[async_trait]
impl Circuits for MemoryStore {
    async fn hold_circuit(&self, hold: CircuitHold) -> Result<(), StoreError> {
        self.lock()
            .circuit_holds
            .insert(hold.provider.clone(), hold);
        Ok(())
    }

    async fn release_circuit(&self, provider: &str) -> Result<bool, StoreError> {
        Ok(self.lock().circuit_holds.remove(provider).is_some())
    }

    async fn circuit_holds(&self) -> Result<Vec<CircuitHold>, StoreError> {
        Ok(self.lock().circuit_holds.values().cloned().collect())
    }
}

#[async_trait]
impl Tenants for MemoryStore {
    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().tenants.get(name).cloned())
    }

    async fn key_grant(&self, key_hash: &[u8]) -> Result<Option<KeyGrant>, StoreError> {
        Ok(self.lock().api_keys.get(key_hash).cloned())
    }

    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        _label: &str,
        scopes: Scopes,
    ) -> Result<String, StoreError> {
        let mut s = self.lock();
        let tenant = s
            .tenants
            .entry(tenant_name.to_owned())
            .or_insert_with(|| uuid::Uuid::now_v7().to_string())
            .clone();
        s.api_keys
            .entry(key_hash.to_vec())
            .or_insert_with(|| KeyGrant {
                tenant_id: tenant.clone(),
                scopes,
            });
        Ok(tenant)
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: Option<herald_core::store::Callback>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        match callback {
            Some(c) => s.callbacks.insert(tenant_id.to_owned(), c),
            None => s.callbacks.remove(tenant_id),
        };
        Ok(())
    }

    async fn callback(
        &self,
        tenant_id: &str,
    ) -> Result<Option<herald_core::store::Callback>, StoreError> {
        Ok(self.lock().callbacks.get(tenant_id).cloned())
    }
}

#[async_trait]
impl Receipts for MemoryStore {
    async fn record_receipts(
        &self,
        provider: &str,
        receipts: Vec<VendorReceipt>,
        now_ms: i64,
    ) -> Result<Vec<ReceiptApplied>, StoreError> {
        let mut s = self.lock();
        let mut out = Vec::with_capacity(receipts.len());
        for r in receipts {
            let Some(d) = s.deliveries.get(&r.delivery_id) else {
                out.push(ReceiptApplied::Unknown);
                continue;
            };
            let channel = d.channel;
            let notification_id = d.notification_id;
            let Some(tenant_id) = s
                .notifications
                .get(&d.notification_id)
                .map(|n| n.tenant_id.clone())
            else {
                out.push(ReceiptApplied::Unknown);
                continue;
            };
            let mut changed = false;
            if let Some(kind) = r.kind {
                let view = ReceiptView {
                    kind,
                    provider: provider.to_owned(),
                    at_ms: r.at_ms,
                    received_at_ms: now_ms,
                    reason: r.reason.clone(),
                };
                let seen = s
                    .receipts
                    .iter()
                    .any(|(id, v)| *id == r.delivery_id && v.kind == kind && v.at_ms == r.at_ms);
                if !seen {
                    s.receipts.push((r.delivery_id, view));
                }
                if let Some(d) = s.deliveries.get_mut(&r.delivery_id) {
                    if d.receipt.is_none_or(|heard| kind.rank() > heard.rank()) {
                        d.receipt = Some(kind);
                        if d.state == DeliveryState::Sent || d.state.receipt_rank() > 0 {
                            d.state = kind.state();
                        }
                        d.updated_at_ms = now_ms;
                        changed = true;
                    }
                }
            }
            out.push(ReceiptApplied::Found {
                tenant_id,
                notification_id,
                channel,
                changed,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Suppressions for MemoryStore {
    async fn suppress(&self, sup: Suppression) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let key = (sup.tenant_id.clone(), sup.channel, sup.address.clone());
        let changed_at_ms = herald_core::now_ms().max(sup.created_at_ms);
        let change = SuppressionChange {
            suppression: sup,
            lifted: false,
            changed_at_ms,
        };
        let before = s.suppressions.insert(key, (change, None));
        Ok(before.is_none_or(|(_, lifted)| lifted.is_some()))
    }

    async fn lift_suppression(
        &self,
        tenant_id: &str,
        channel: Channel,
        address: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let key = (tenant_id.to_owned(), channel, address.to_owned());
        match s.suppressions.get_mut(&key) {
            Some((change, lifted @ None)) => {
                *lifted = Some(now_ms);
                change.lifted = true;
                change.changed_at_ms = herald_core::now_ms().max(now_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn suppressions(
        &self,
        f: &SuppressionFilter,
        after: Option<SuppressionCursor>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        let s = self.lock();
        let mut found: Vec<&Suppression> = s
            .suppressions
            .values()
            .filter(|(_, lifted)| lifted.is_none())
            .map(|(c, _)| &c.suppression)
            .filter(|x| f.tenant_id.as_ref().is_none_or(|t| *t == x.tenant_id))
            .filter(|x| f.channel.is_none_or(|c| c == x.channel))
            .filter(|x| f.reason.is_none_or(|r| r == x.reason))
            .filter(|x| f.address.as_ref().is_none_or(|a| *a == x.address))
            .collect();
        // Newest first, then by (tenant, channel, address) as the databases.
        let order = |x: &Suppression| {
            (
                std::cmp::Reverse(x.created_at_ms),
                x.tenant_id.clone(),
                x.channel.as_str(),
                x.address.clone(),
            )
        };
        found.sort_by_key(|x| order(x));
        Ok(found
            .into_iter()
            .filter(|x| {
                after.as_ref().is_none_or(|c| {
                    order(x)
                        > (
                            std::cmp::Reverse(c.created_at_ms),
                            c.tenant_id.clone(),
                            c.channel.as_str(),
                            c.address.clone(),
                        )
                })
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn suppression_changes(
        &self,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<SuppressionChange>, StoreError> {
        let s = self.lock();
        let key = |c: &SuppressionChange| {
            (
                c.changed_at_ms,
                c.suppression.tenant_id.clone(),
                c.suppression.channel.as_str().to_owned(),
                c.suppression.address.clone(),
            )
        };
        let from = (
            after.changed_at_ms,
            after.tenant_id.clone(),
            after.channel.clone(),
            after.address.clone(),
        );
        let mut found: Vec<&SuppressionChange> = s
            .suppressions
            .values()
            .map(|(c, _)| c)
            .filter(|c| key(c) > from)
            .collect();
        found.sort_by_key(|c| key(c));
        Ok(found.into_iter().take(limit).cloned().collect())
    }
}

#[async_trait]
impl Health for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl Reports for MemoryStore {
    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError> {
        let s = self.lock();
        Ok(s.deliveries
            .values()
            .filter_map(|d| {
                let n = s.notifications.get(&d.notification_id)?;
                Some(DeliverySummary {
                    channel: d.channel,
                    priority: d.priority,
                    state: d.state,
                    provider: d.provider.clone(),
                    accepted_at_ms: n.accepted_at_ms,
                    sent_at_ms: d.sent_at_ms,
                })
            })
            .collect())
    }
}
