//! SendGrid v3 Mail Send (`POST /v3/mail/send`) wire types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct MailSend {
    pub personalizations: Vec<Personalization>,
    pub from: EmailAddress,
    pub subject: String,
    /// `text/plain` first, then `text/html`, as SendGrid requires.
    pub content: Vec<ContentPart>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Echoed back in SendGrid's event webhooks: how receipts find the delivery.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_args: BTreeMap<String, String>,
    /// Extra message headers (the one-click unsubscribe pair).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Personalization {
    pub to: Vec<EmailAddress>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EmailAddress {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// Error body: `{"errors": [{"message": ..., "field": ..., "help": ...}]}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
}

/// One event of the Event Webhook (the fields Herald reads; the custom
/// arguments sent with the message come back as top-level fields).
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// For `bounce`: `bounce` (the mailbox does not exist) or `blocked`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The SMTP status, e.g. `5.1.1`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub sg_event_id: Option<String>,
    #[serde(default)]
    pub herald_delivery_key: Option<String>,
}
