//! Slack's wire types: `chat.postMessage` (Web API, JSON) and an incoming
//! webhook's body.

use serde::{Deserialize, Serialize};

/// `POST /api/chat.postMessage`.
/// <https://api.slack.com/methods/chat.postMessage>
#[derive(Debug, Serialize, Deserialize)]
pub struct PostMessage {
    pub channel: String,
    pub text: String,
    /// Message metadata: which delivery it is, visible to Slack apps.
    pub metadata: Metadata,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Metadata {
    pub event_type: String,
    pub event_payload: serde_json::Value,
}

/// An incoming webhook's body: the channel is the webhook's own.
/// <https://api.slack.com/messaging/webhooks>
#[derive(Debug, Serialize, Deserialize)]
pub struct HookMessage {
    pub text: String,
}

/// Every Web API answer: `ok`, and on failure the `error` code (with HTTP
/// 200, except a rate limit's 429).
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The posted message's timestamp: its id in the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}
