//! Amazon SES v2 `SendEmail` (`POST /v2/email/outbound-emails`) wire types.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendEmail {
    pub from_email_address: String,
    pub destination: Destination,
    pub content: EmailContent,
    pub email_tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_set_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Destination {
    pub to_addresses: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EmailContent {
    pub simple: Simple,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Simple {
    pub subject: Part,
    pub body: Body,
    /// Extra message headers (the one-click unsubscribe pair).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<Part>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Part {
    pub data: String,
    pub charset: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Sent {
    pub message_id: String,
}

/// An error answer's body (`{"message": ...}`, some with `__type`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, rename = "__type")]
    pub kind: Option<String>,
    #[serde(default, alias = "Message")]
    pub message: Option<String>,
}
