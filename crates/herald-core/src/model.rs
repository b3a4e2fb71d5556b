//! The domain: what a notification is, where it goes, and what state each
//! delivery is in. These types are also the public JSON contract of the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A delivery channel. Each channel has its own worker pool.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Webhook,
    /// Team chat (Slack): a conversation or an incoming webhook.
    Chat,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Email,
        Channel::Sms,
        Channel::Push,
        Channel::Webhook,
        Channel::Chat,
    ];

    /// Its place in `ALL`, for per-channel arrays.
    pub fn index(self) -> usize {
        match self {
            Channel::Email => 0,
            Channel::Sms => 1,
            Channel::Push => 2,
            Channel::Webhook => 3,
            Channel::Chat => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
            Channel::Chat => "chat",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

/// A priority lane. Lower `index()` is served first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Highest lane first: the order in which workers take work.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: i64) -> Option<Priority> {
        usize::try_from(i)
            .ok()
            .and_then(|i| Priority::ALL.get(i).copied())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one delivery (notification × channel × destination).
///
/// `queued → sending → sent`, `sending → retry_scheduled → sending`, the
/// terminal `failed`, `dead`, `expired`, `suppressed`, `cancelled`, and
/// after `sent` what the vendor's receipts say: `delivered`, `undelivered`,
/// `bounced`, `complained` (`receipt::ReceiptKind`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Queued,
    Sending,
    RetryScheduled,
    Sent,
    Delivered,
    Failed,
    Dead,
    Expired,
    Suppressed,
    Cancelled,
    Undelivered,
    Bounced,
    Complained,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 13] = [
        DeliveryState::Queued,
        DeliveryState::Sending,
        DeliveryState::RetryScheduled,
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Dead,
        DeliveryState::Expired,
        DeliveryState::Suppressed,
        DeliveryState::Cancelled,
        DeliveryState::Undelivered,
        DeliveryState::Bounced,
        DeliveryState::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sending => "sending",
            DeliveryState::RetryScheduled => "retry_scheduled",
            DeliveryState::Sent => "sent",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
            DeliveryState::Expired => "expired",
            DeliveryState::Suppressed => "suppressed",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Undelivered => "undelivered",
            DeliveryState::Bounced => "bounced",
            DeliveryState::Complained => "complained",
        }
    }

    /// No further work will happen on a delivery in a terminal state
    /// (`sent` waits only for a vendor receipt, which is not work for a worker).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            DeliveryState::Queued | DeliveryState::Sending | DeliveryState::RetryScheduled
        )
    }

    /// Whether the state machine allows `self → to`.
    pub fn can_move_to(self, to: DeliveryState) -> bool {
        use DeliveryState::*;
        match (self, to) {
            (Queued | RetryScheduled, Sending) => true,
            // An expired lease is claimed again: sending → sending, same key.
            (Sending, Sending) => true,
            (Sending, Queued) => true, // released on shutdown
            (Sending, Sent | RetryScheduled | Failed | Dead | Expired | Suppressed) => true,
            (Queued | RetryScheduled, Expired | Cancelled | Suppressed) => true,
            (Sent, Delivered | Failed) => true,
            // A vendor's receipt; later news of higher rank replaces earlier
            // (`receipt::ReceiptKind::rank`), whatever order it comes in.
            (
                Sent | Delivered | Undelivered | Bounced,
                Delivered | Undelivered | Bounced | Complained,
            ) => to.receipt_rank() > self.receipt_rank(),
            // Replayed from the dead letters.
            (Dead, Queued) => true,
            _ => false,
        }
    }
}

impl DeliveryState {
    /// How much a receipt state says: a bounce or a complaint is never
    /// replaced by a `delivered` that arrives after it. 0 for the others.
    pub fn receipt_rank(self) -> u8 {
        match self {
            DeliveryState::Delivered => 1,
            DeliveryState::Undelivered => 2,
            DeliveryState::Bounced => 3,
            DeliveryState::Complained => 4,
            _ => 0,
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {0:?}")]
pub struct UnknownName(pub String);

/// A device to push to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushToken {
    pub platform: PushPlatform,
    pub token: String,
    /// Which app the token belongs to (a bundle or package id), for a
    /// person with several of the tenant's apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushPlatform {
    Android,
    Ios,
    Web,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_tokens: Vec<PushToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Where chat messages go: a Slack conversation id (`C…` channel,
    /// `G…` private channel, `D…` direct message, `U…`/`W…` user) or a
    /// Slack incoming webhook URL (`https://hooks.slack.com/services/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
}

impl Recipient {
    /// Whether `address` is one of this recipient's: its id, email (in any
    /// case), phone, a push token, webhook URL or chat address.
    pub fn has(&self, address: &str) -> bool {
        let is = |a: &Option<String>| a.as_deref() == Some(address);
        is(&self.id)
            || self
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(address))
            || is(&self.phone)
            || is(&self.webhook_url)
            || is(&self.chat)
            || self.push_tokens.iter().any(|t| t.token == address)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub id: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// `POST /v1/notifications` body, as the client sent it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub recipient: Recipient,
    pub channels: Vec<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Only in batch items: the item's own idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Where one delivery goes: a channel and, for push, which of the
/// recipient's devices. Each push device is its own delivery, so one
/// unregistered token fails alone and the others still arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub channel: Channel,
    /// Index into `recipient.push_tokens` for push; 0 otherwise.
    pub target: u32,
}

impl NotificationRequest {
    /// One destination per channel, one per device for push.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut out = Vec::with_capacity(self.channels.len());
        for &channel in &self.channels {
            if channel == Channel::Push {
                for i in 0..self.recipient.push_tokens.len() {
                    let target = u32::try_from(i).unwrap_or(u32::MAX);
                    out.push(Destination { channel, target });
                }
            } else {
                out.push(Destination { channel, target: 0 });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_ordered_highest_first() {
        let idx: Vec<usize> = Priority::ALL.iter().map(|p| p.index()).collect();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        assert_eq!(Priority::from_index(0), Some(Priority::Critical));
        assert_eq!(Priority::from_index(4), None);
        assert_eq!(Priority::from_index(-1), None);
    }

    #[test]
    fn state_machine_forbids_going_back_from_terminal() {
        use DeliveryState::*;
        assert!(Queued.can_move_to(Sending));
        assert!(Sending.can_move_to(Sent));
        assert!(Sent.can_move_to(Delivered));
        assert!(!Sent.can_move_to(Sending));
        assert!(!Failed.can_move_to(Sending));
        assert!(Dead.can_move_to(Queued), "a dead letter is replayed");
        assert!(!Failed.can_move_to(Queued));
        assert!(!Queued.can_move_to(Sent), "must go through sending");
    }

    #[test]
    fn states_round_trip_by_name() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>(), Ok(s));
        }
        assert!("bogus".parse::<DeliveryState>().is_err());
    }

    #[test]
    fn push_fans_out_per_device() {
        let req = NotificationRequest {
            priority: Priority::High,
            category: None,
            recipient: Recipient {
                push_tokens: vec![
                    PushToken {
                        platform: PushPlatform::Android,
                        token: "a".into(),
                        app: None,
                    },
                    PushToken {
                        platform: PushPlatform::Ios,
                        token: "b".into(),
                        app: None,
                    },
                ],
                email: Some("a@example.com".into()),
                ..Recipient::default()
            },
            channels: vec![Channel::Email, Channel::Push],
            content: None,
            template: None,
            ttl_seconds: None,
            send_at: None,
            metadata: None,
            idempotency_key: None,
        };
        let d = req.destinations();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[2],
            Destination {
                channel: Channel::Push,
                target: 1
            }
        );
    }
}
