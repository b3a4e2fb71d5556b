//! Tenants' callbacks: when a delivery reaches a state its tenant asked to
//! hear of (sent, failed, dead, bounced, delivered, ...), Herald posts a
//! `notification.<state>` event to the tenant's callback URL. The event is
//! itself a notification on the webhook channel, so it is signed (Standard
//! Webhooks), retried, guarded by the destination's circuit and dead-
//! lettered like any webhook; its idempotency key is the delivery's and the
//! state's, so an event made twice (an outcome written again, a receipt
//! repeated) is sent once. Callbacks' own deliveries make no events.
//!
//! Each tenant's setting is read from the store at most every few seconds
//! (`CACHE_FOR`): the delivery path pays a map lookup, and a tenant without
//! a callback nothing more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::bus::Bus;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::store::{
    Callback, CreateResult, IdempotencyRecord, Intake, NewDelivery, NewNotification,
    StoredResponse, Tenants,
};
use herald_providers::webhook::{EVENT_DATA, EVENT_TYPE};

/// The category of callbacks' own notifications: they make no events.
pub const CATEGORY: &str = "herald.callback";
/// How long a tenant's setting is used before it is read again.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// How long writing an event may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event is worth sending.
const TTL_SECONDS: u64 = 24 * 3600;

/// What happened to one delivery.
#[derive(Debug, Clone)]
pub struct Event {
    pub tenant_id: String,
    pub notification_id: uuid::Uuid,
    pub delivery_id: uuid::Uuid,
    pub channel: Channel,
    pub state: DeliveryState,
    pub provider: Option<String>,
    /// Why, in the vendor's or Herald's words.
    pub reason: Option<String>,
    pub at_ms: i64,
}

pub struct Callbacks {
    tenants: Arc<dyn Tenants>,
    intake: Arc<dyn Intake>,
    bus: Arc<dyn Bus>,
    settings: Mutex<HashMap<String, (Instant, Option<Callback>)>>,
}

impl Callbacks {
    pub fn new(tenants: Arc<dyn Tenants>, intake: Arc<dyn Intake>, bus: Arc<dyn Bus>) -> Self {
        Self {
            tenants,
            intake,
            bus,
            settings: Mutex::default(),
        }
    }

    /// Forgets a tenant's setting, so a change on this node counts at once.
    pub fn forget(&self, tenant_id: &str) {
        self.lock().remove(tenant_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Callback>)>> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's callback if it asked for events of `state`.
    async fn wanted(&self, tenant_id: &str, state: DeliveryState) -> Option<Callback> {
        let held = self
            .lock()
            .get(tenant_id)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, c)| c.clone());
        let setting = match held {
            Some(c) => c,
            None => {
                let read = tokio::time::timeout(WRITE_TIMEOUT, self.tenants.callback(tenant_id))
                    .await
                    .ok()
                    .and_then(Result::ok)?;
                self.lock()
                    .insert(tenant_id.to_owned(), (Instant::now(), read.clone()));
                read
            }
        };
        setting.filter(|c| c.events.contains(&state))
    }

    /// Sends `e` to its tenant's callback, if it has one that wants it;
    /// `payload` is the delivery's stored request, when at hand (a
    /// callback's own delivery makes no event). Bounded; a failure is
    /// logged, and the delivery itself is not affected.
    pub async fn emit(&self, e: Event, payload: Option<&str>) {
        let Some(callback) = self.wanted(&e.tenant_id, e.state).await else {
            return;
        };
        #[derive(serde::Deserialize)]
        struct Category {
            category: Option<String>,
        }
        let category = payload
            .and_then(|p| serde_json::from_str::<Category>(p).ok())
            .and_then(|c| c.category);
        if category.as_deref() == Some(CATEGORY) {
            return;
        }
        let kind = format!("notification.{}", e.state.as_str());
        let data = serde_json::json!({
            "notification_id": e.notification_id,
            "delivery_id": e.delivery_id,
            "channel": e.channel,
            "state": e.state,
            "provider": e.provider,
            "reason": e.reason,
            "at": crate::dlq::rfc3339(e.at_ms),
        });
        let request: NotificationRequest = match serde_json::from_value(serde_json::json!({
            "priority": "normal",
            "category": CATEGORY,
            "channels": ["webhook"],
            "recipient": {"webhook_url": callback.url},
            "content": {"subject": kind, "text": data.to_string()},
            "ttl_seconds": TTL_SECONDS,
            "metadata": {EVENT_TYPE: kind, EVENT_DATA: data},
        })) {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(error = %err, "cannot make a callback event");
                return;
            }
        };
        let now = herald_core::now_ms();
        let id = uuid::Uuid::now_v7();
        let key = format!("herald.callback.{}.{}", e.delivery_id, e.state.as_str());
        let record = IdempotencyRecord {
            request_hash: key.as_bytes().to_vec(),
            response: StoredResponse {
                status: 202,
                body: String::new(),
            },
        };
        let n = NewNotification {
            id,
            tenant_id: e.tenant_id.clone(),
            deliveries: vec![NewDelivery {
                id: uuid::Uuid::now_v7(),
                channel: Channel::Webhook,
                target: 0,
                ended: None,
                held_until_ms: None,
                leased: None,
            }],
            request,
            accepted_at_ms: now,
            due_at_ms: now,
            expires_at_ms: Some(now + i64::try_from(TTL_SECONDS).unwrap_or(0) * 1000),
            idempotency: Some((key, record)),
            correlation_id: None,
            traceparent: None,
            cap: None,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.intake.create(vec![n])).await {
            Ok(Ok(results)) => {
                if results.first() == Some(&CreateResult::Created) {
                    self.bus.announce(&[(Channel::Webhook, Priority::Normal)]);
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, tenant_id = %e.tenant_id, "cannot store a callback event; it is not sent");
            }
            Err(_) => {
                tracing::warn!(tenant_id = %e.tenant_id, "storing a callback event timed out; it is not sent");
            }
        }
    }
}
