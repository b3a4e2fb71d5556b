//! Firebase Cloud Messaging HTTP v1 (`POST /v1/projects/{id}/messages:send`)
//! wire types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct SendRequest {
    pub message: Message,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Message {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// FCM data values must be strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub android: Option<AndroidConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsConfig>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Notification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AndroidConfig {
    /// `HIGH` or `NORMAL`.
    pub priority: String,
    /// Duration, e.g. `"3600s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApnsConfig {
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    /// `projects/{id}/messages/{message_id}`.
    pub name: String,
}

/// Google's error envelope; FCM's own code is in `details[].errorCode`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorStatus,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorStatus {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "@type", default)]
    pub kind: String,
    #[serde(rename = "errorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// Google's OAuth 2 token endpoint's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds the token lasts.
    pub expires_in: i64,
    #[serde(default)]
    pub token_type: String,
}

/// Google's OAuth 2 token endpoint's refusal (RFC 6749 section 5.2).
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
}
