//! What the API takes and gives, as types: every response body is one of
//! these (no `json!` building), and the OpenAPI document (`openapi.rs`) is
//! generated from them, so the two cannot drift apart. Requests are the
//! domain's own `NotificationRequest` (herald-core, with its schema).

use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::receipt::ReceiptKind;
use herald_core::status::AccountView;
use herald_core::store::{AttemptView, DeadLetter, DeliveryView, NotificationView};
use herald_core::suppression::{Suppression, SuppressionReason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dlq::rfc3339;

/// `202` to a notification: stored, durably.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: uuid::Uuid,
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: String,
}

impl Accepted {
    pub fn new(id: uuid::Uuid) -> Self {
        Self {
            id,
            status: "accepted".into(),
        }
    }
}

/// `POST /v1/notifications/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// 1 to `server.max_batch_items` notifications; each may carry its own
    /// `idempotency_key`.
    pub notifications: Vec<NotificationRequest>,
}

/// One result per item, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOut {
    pub results: Vec<BatchItem>,
}

/// An item's result: accepted (or replayed from its idempotency key), or
/// refused with a problem.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Accepted {
        id: uuid::Uuid,
        /// Always `accepted`.
        status: String,
        /// Present and true when the item's idempotency key answered with
        /// an earlier result.
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<bool>,
    },
    Refused {
        error: super::problem::Problem,
    },
}

/// `GET /v1/notifications/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationOut {
    pub id: uuid::Uuid,
    /// `completed` once every delivery has finished, else `in_progress`.
    #[schema(example = "in_progress")]
    pub status: String,
    pub priority: Priority,
    pub category: Option<String>,
    /// The addresses it was accepted with: as the request gave them, the
    /// rest from the stored recipient it named by id at that moment.
    pub recipient: herald_core::model::Recipient,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    pub expires_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// One per channel; one per device for push.
    pub channels: Vec<DeliveryOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// Also the idempotency key every vendor gets for it.
    pub delivery_id: uuid::Uuid,
    pub channel: Channel,
    /// Push only: which of the recipient's devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    pub state: DeliveryState,
    pub provider: Option<String>,
    pub vendor_message_id: Option<String>,
    pub attempts: Vec<AttemptOut>,
    /// What the vendor reported after it took the message, in its order.
    pub receipts: Vec<ReceiptOut>,
    pub last_error: Option<String>,
    pub sent_at: Option<String>,
    pub updated_at: String,
}

/// A vendor's receipt for a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptOut {
    pub kind: ReceiptKind,
    pub provider: String,
    /// When the vendor says it happened.
    pub at: String,
    /// When Herald heard of it.
    pub received_at: String,
    /// The vendor's words (an error code, the mail server's reply).
    pub reason: Option<String>,
}

/// One call to a vendor.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    pub attempt: u32,
    pub at: String,
    pub provider: Option<String>,
    /// `accepted`, `transient`, `rate_limited` or `permanent`.
    pub outcome: String,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl From<&NotificationView> for NotificationOut {
    fn from(v: &NotificationView) -> Self {
        let done = v.deliveries.iter().all(|d| d.state.is_terminal());
        NotificationOut {
            id: v.id,
            status: if done { "completed" } else { "in_progress" }.into(),
            priority: v.request.priority,
            category: v.request.category.clone(),
            recipient: v.request.recipient.clone(),
            created_at: rfc3339(v.accepted_at_ms),
            expires_at: v.expires_at_ms.map(rfc3339),
            metadata: v.request.metadata.clone(),
            channels: v.deliveries.iter().map(DeliveryOut::from).collect(),
        }
    }
}

impl From<&DeliveryView> for DeliveryOut {
    fn from(d: &DeliveryView) -> Self {
        DeliveryOut {
            delivery_id: d.id,
            channel: d.channel,
            device: (d.channel == Channel::Push).then_some(d.target),
            state: d.state,
            provider: d.provider.clone(),
            vendor_message_id: d.vendor_message_id.clone(),
            attempts: d.attempts.iter().map(AttemptOut::from).collect(),
            receipts: d
                .receipts
                .iter()
                .map(|r| ReceiptOut {
                    kind: r.kind,
                    provider: r.provider.clone(),
                    at: rfc3339(r.at_ms),
                    received_at: rfc3339(r.received_at_ms),
                    reason: r.reason.clone(),
                })
                .collect(),
            last_error: d.last_error.clone(),
            sent_at: d.sent_at_ms.map(rfc3339),
            updated_at: rfc3339(d.updated_at_ms),
        }
    }
}

impl From<&AttemptView> for AttemptOut {
    fn from(a: &AttemptView) -> Self {
        AttemptOut {
            attempt: a.attempt,
            at: rfc3339(a.at_ms),
            provider: a.provider.clone(),
            outcome: a.outcome.clone(),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
        }
    }
}

/// `GET /v1/providers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvidersOut {
    pub providers: Vec<ProviderOut>,
    /// On a sandbox: the vendor simulator every provider here sends to
    /// (nothing reaches a real person).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulator: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderOut {
    pub name: String,
    pub vendor: String,
    pub channel: Channel,
    pub circuit: CircuitOut,
    /// Webhook providers only: circuits kept per destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destinations: Option<DestinationsOut>,
    pub rate_limit_per_second: Option<u32>,
    pub max_concurrency: Option<usize>,
    pub in_flight: Option<usize>,
    pub request_timeout_ms: u64,
    /// Present while the vendor refuses the account's credential (bad,
    /// expired or revoked): its messages wait, critical ones fail over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_refused: Option<RefusedOut>,
    /// Present while an operator holds the circuit open by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldOut>,
    /// The latest call that counted against the circuit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastErrorOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeldOut {
    pub by: String,
    pub reason: String,
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastErrorOut {
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedOut {
    pub since: String,
    /// The vendor's latest answer.
    pub reason: String,
    /// Calls refused since then.
    pub calls: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitOut {
    /// `closed`, `open` or `half_open`.
    #[schema(example = "closed")]
    pub state: String,
    pub consecutive_failures: u32,
    pub opened_at: Option<String>,
    pub reopens_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationsOut {
    pub tracked: usize,
    pub max_tracked: usize,
    /// Open or half-open destinations, every tenant's.
    pub open_count: usize,
    /// The asking tenant's own (at most 20).
    pub open: Vec<OpenDestinationOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenDestinationOut {
    /// `https://hooks.example.com:443`
    pub origin: String,
    pub circuit: CircuitOut,
}

impl From<&herald_core::breaker::BreakerView> for CircuitOut {
    fn from(c: &herald_core::breaker::BreakerView) -> Self {
        CircuitOut {
            state: c.state.as_str().into(),
            consecutive_failures: c.consecutive_failures,
            opened_at: c.opened_at_ms.map(rfc3339),
            reopens_at: c.reopens_at_ms.map(rfc3339),
        }
    }
}

impl From<AccountView> for ProviderOut {
    fn from(a: AccountView) -> Self {
        ProviderOut {
            name: a.name,
            vendor: a.vendor.into(),
            channel: a.channel,
            circuit: CircuitOut::from(&a.circuit),
            destinations: a.destinations.map(|d| DestinationsOut {
                tracked: d.tracked,
                max_tracked: d.max_tracked,
                open_count: d.open_count,
                open: d
                    .open
                    .iter()
                    .map(|o| OpenDestinationOut {
                        origin: o.origin.clone(),
                        circuit: CircuitOut::from(&o.circuit),
                    })
                    .collect(),
            }),
            rate_limit_per_second: a.rate_limit_per_second,
            max_concurrency: a.max_concurrency,
            in_flight: a.in_flight,
            request_timeout_ms: u64::try_from(a.request_timeout_ms).unwrap_or(u64::MAX),
            credential_refused: a.refused.map(|r| RefusedOut {
                since: rfc3339(r.since_ms),
                reason: r.reason,
                calls: r.calls,
            }),
            held: a.hold.map(|h| HeldOut {
                by: h.by,
                reason: h.reason,
                since: rfc3339(h.since_ms),
            }),
            last_error: a.last_error.map(|e| LastErrorOut {
                at: rfc3339(e.at_ms),
                reason: e.reason,
            }),
        }
    }
}

/// `GET /v1/dead-letters`: a page, oldest death first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersOut {
    pub dead_letters: Vec<DeadLetterOut>,
    /// Pass back as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterOut {
    /// The delivery id (also its vendor idempotency key).
    pub id: uuid::Uuid,
    pub notification_id: uuid::Uuid,
    pub channel: Channel,
    /// Push only: which device.
    pub device: Option<u32>,
    pub priority: Priority,
    pub provider: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub dead_at: String,
    pub created_at: String,
}

impl From<&DeadLetter> for DeadLetterOut {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterOut {
            id: d.id,
            notification_id: d.notification_id,
            channel: d.channel,
            device: (d.channel == Channel::Push).then_some(d.target),
            priority: d.priority,
            provider: d.provider.clone(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            dead_at: rfc3339(d.dead_at_ms),
            created_at: rfc3339(d.accepted_at_ms),
        }
    }
}

/// `POST /v1/dead-letters/replay`: which dead letters, oldest first.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    pub channel: Option<String>,
    pub provider: Option<String>,
    /// Died at or after (RFC 3339).
    pub since: Option<String>,
    /// Died before (RFC 3339).
    pub until: Option<String>,
    /// 1 to 1,000 (the default).
    pub limit: Option<usize>,
    /// Not taken here (bulk replay has no pages); refused if given.
    pub cursor: Option<String>,
}

/// `202` to a replay of one dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub id: uuid::Uuid,
    /// Always `queued`.
    #[schema(example = "queued")]
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedMany {
    pub replayed: u64,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: each dependency `ok`, or why not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `unavailable` or `draining`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Lanes refusing new work (admission control), as `channel lane:
    /// reason`; the node is still ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shedding: Vec<String>,
    /// Provider accounts whose credential the vendor refuses, as `name:
    /// credential refused since TIME: the vendor's answer`; the node is
    /// still ready (it takes work, which waits or fails over).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// On a sandbox: the vendor simulator its providers send to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulator: Option<String>,
}

/// `PUT /v1/suppressions`: an address not to send to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionIn {
    pub channel: Channel,
    /// An email address, an E.164 phone number, a push token or a webhook
    /// URL, by the channel. Email addresses are kept in lower case.
    pub address: String,
    /// Why (default `manual`; another reason when importing a list kept
    /// elsewhere).
    pub reason: Option<SuppressionReason>,
    /// A note, up to 1,000 bytes.
    pub detail: Option<String>,
}

/// A suppressed address.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionOut {
    pub channel: Channel,
    /// In its normal form (email in lower case).
    pub address: String,
    pub reason: SuppressionReason,
    /// The vendor's words, or the note it was added with.
    pub detail: Option<String>,
    /// Who added it: a provider account's name, `api` or `cli`.
    pub source: String,
    /// When it was added (or last added again).
    pub created_at: String,
}

impl From<&Suppression> for SuppressionOut {
    fn from(s: &Suppression) -> Self {
        SuppressionOut {
            channel: s.channel,
            address: s.address.clone(),
            reason: s.reason,
            detail: s.detail.clone(),
            source: s.source.clone(),
            created_at: rfc3339(s.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionsOut {
    pub suppressions: Vec<SuppressionOut>,
    /// Pass back as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `200` to a vendor's receipts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptsOut {
    /// Events read from the request that concern a Herald delivery.
    pub received: usize,
    /// How many moved their delivery on (a repeat, or older news than the
    /// delivery has heard, does not).
    pub changed: usize,
    /// How many named a delivery this store does not hold.
    pub unknown: usize,
}

/// `PUT /v1/callbacks`: where Herald tells the tenant what became of its
/// notifications.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackIn {
    /// An http(s) URL, checked as a webhook recipient's.
    pub url: String,
    /// The final states to hear of; every one when left out.
    pub events: Option<Vec<DeliveryState>>,
}

/// The tenant's callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackOut {
    pub url: String,
    pub events: Vec<DeliveryState>,
}

/// A stored recipient: its id, the profile as `PUT` takes it, its version
/// and when it last changed. (The profile's fields are listed again here:
/// the request's type refuses unknown fields, and this one has more.)
#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientOut {
    /// The tenant's own id for the person.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub push_tokens: Vec<herald_core::model::PushToken>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<herald_core::recipient::QuietHours>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Bumped by every change.
    pub version: i64,
    pub updated_at: String,
}

impl RecipientOut {
    pub fn new(
        id: String,
        p: herald_core::recipient::Profile,
        version: i64,
        updated_at: String,
    ) -> Self {
        let herald_core::recipient::Profile {
            email,
            phone,
            push_tokens,
            webhook_url,
            chat,
            locale,
            timezone,
            quiet_hours,
            data,
        } = p;
        RecipientOut {
            id,
            email,
            phone,
            push_tokens,
            webhook_url,
            chat,
            locale,
            timezone,
            quiet_hours,
            data,
            version,
            updated_at,
        }
    }
}

/// `DELETE /v1/recipients/{id}`: what the erasure removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasedOut {
    pub id: String,
    pub erased: herald_core::recipient::Erased,
}

/// `DELETE /v1/notifications/{id}`: each delivery as the cancel left it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelOut {
    pub id: uuid::Uuid,
    /// How many deliveries this cancel ended.
    pub cancelled: usize,
    pub channels: Vec<CancelledOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelledOut {
    pub delivery_id: uuid::Uuid,
    pub channel: Channel,
    /// Push only: which of the recipient's devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    /// `cancelled`, or the state that kept it (`sending`: a worker has it
    /// and it goes out; `sent`, `failed`, … : it had finished).
    pub state: DeliveryState,
    /// Whether this cancel ended it.
    pub cancelled: bool,
}

impl From<&herald_core::store::CancelledDelivery> for CancelledOut {
    fn from(d: &herald_core::store::CancelledDelivery) -> Self {
        CancelledOut {
            delivery_id: d.id,
            channel: d.channel,
            device: (d.channel == Channel::Push).then_some(d.target),
            state: d.state,
            cancelled: d.cancelled,
        }
    }
}
