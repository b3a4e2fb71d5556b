//! Twilio Programmable Messaging (`POST /2010-04-01/Accounts/{Sid}/Messages.json`)
//! wire types. Requests are form-encoded; responses are JSON.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateMessage {
    #[serde(rename = "To")]
    pub to: String,
    #[serde(rename = "From", default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(
        rename = "MessagingServiceSid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub messaging_service_sid: Option<String>,
    #[serde(rename = "Body")]
    pub body: String,
    /// Seconds the message may wait in Twilio's queue (1 to 36000).
    #[serde(
        rename = "ValidityPeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub validity_period: Option<u64>,
    #[serde(
        rename = "StatusCallback",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub status_callback: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Message {
    pub sid: String,
    #[serde(default)]
    pub status: Option<String>,
}

/// `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: Option<u32>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: Option<u16>,
}
