//! Amazon SNS Publish (Query API, version 2010-03-31): the XML it answers
//! with. (The request is a flat form, built in `mod.rs`.)

use serde::Deserialize;

/// `<PublishResponse><PublishResult><MessageId>`.
#[derive(Debug, Deserialize)]
pub struct PublishResponse {
    #[serde(rename = "PublishResult")]
    pub result: PublishResult,
}

#[derive(Debug, Deserialize)]
pub struct PublishResult {
    #[serde(rename = "MessageId")]
    pub message_id: String,
}

/// `<ErrorResponse><Error><Type/><Code/><Message/></Error></ErrorResponse>`.
#[derive(Debug, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "Error")]
    pub error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "Type", default)]
    pub kind: Option<String>,
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message", default)]
    pub message: Option<String>,
}
