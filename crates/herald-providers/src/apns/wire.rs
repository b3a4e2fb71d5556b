//! APNs (`POST /3/device/{token}`, HTTP/2) wire types.

use serde::{Deserialize, Serialize};

/// The `aps` dictionary Herald sends: an alert.
#[derive(Debug, Serialize, Deserialize)]
pub struct Aps {
    pub alert: Alert,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Alert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// An error answer: `{"reason": "BadDeviceToken"}` (410s add `timestamp`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub reason: String,
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// The provider token's claims (ES256, `kid` in the header).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
}
