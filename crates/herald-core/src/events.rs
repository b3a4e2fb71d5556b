//! The events Herald puts on its bus. Versioned: a consumer reads
//! `schema` and `version` first and handles what it knows.
//!
//! Evolving the schema (docs/deployment.md says the same):
//! - adding an optional field is a compatible change: the version stays, and
//!   readers ignore fields they do not know (no `deny_unknown_fields` here);
//! - removing or renaming a field, or changing its meaning or type, is a new
//!   version; producers publish the new version only once every consumer
//!   reads both, and consumers keep reading the old one until its topics'
//!   retention has passed.

use serde::{Deserialize, Serialize};

use crate::model::{Channel, Priority};
use crate::store::NewNotification;

pub const NOTIFICATION_REQUESTED: &str = "herald.notification_requested";

/// A notification was accepted and stored: its deliveries wait to be sent.
/// One event per notification, on its lane's topic; every channel's
/// consumer group sees it and takes the deliveries of its own channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequested {
    pub schema: String,
    pub version: u32,
    pub notification_id: uuid::Uuid,
    pub tenant_id: String,
    pub priority: Priority,
    pub accepted_at_ms: i64,
    /// When the first attempt is due (a scheduled send is later than
    /// `accepted_at_ms`).
    pub due_at_ms: i64,
    pub deliveries: Vec<EventDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDelivery {
    pub id: uuid::Uuid,
    pub channel: Channel,
    pub target: u32,
}

impl NotificationRequested {
    pub const VERSION: u32 = 1;

    pub fn of(n: &NewNotification) -> Self {
        Self {
            schema: NOTIFICATION_REQUESTED.to_owned(),
            version: Self::VERSION,
            notification_id: n.id,
            tenant_id: n.tenant_id.clone(),
            priority: n.request.priority,
            accepted_at_ms: n.accepted_at_ms,
            due_at_ms: n.due_at_ms,
            deliveries: n
                .deliveries
                .iter()
                .map(|d| EventDelivery {
                    id: d.id,
                    channel: d.channel,
                    target: d.target,
                })
                .collect(),
        }
    }
}

/// The partition key of a notification's event: its recipient, so one
/// recipient's notifications stay in order. The recipient's own id when the
/// client gave one, else its first address.
pub fn recipient_key(n: &NewNotification) -> String {
    let r = &n.request.recipient;
    r.id.clone()
        .or_else(|| r.email.clone())
        .or_else(|| r.phone.clone())
        .or_else(|| r.push_tokens.first().map(|t| t.token.clone()))
        .or_else(|| r.webhook_url.clone())
        .unwrap_or_else(|| n.id.to_string())
}

/// An event waiting in the outbox, or read from it to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Its place in the outbox: a lane's events are published in this order.
    pub seq: i64,
    pub lane: Priority,
    pub key: String,
    pub tenant_id: String,
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    /// The event, as JSON.
    pub payload: String,
    /// When it was written (with its notification): how long the relay
    /// has left it waiting.
    pub created_at_ms: i64,
}
