//! Vendor adapters. Each vendor is a folder: `mod.rs` builds the request and
//! classifies the response, `wire.rs` holds its serde types. Adapters do no
//! I/O: the engine sends, times, retries and breaks.
//!
//! Every request carries the delivery's stable key in `Idempotency-Key`
//! (and in the vendor's own field where it has one), on every attempt.

pub mod apns;
mod aws;
pub mod fcm;
pub mod sendgrid;
pub mod ses;
pub mod slack;
pub mod smtp;
pub mod sns;
pub mod twilio;
pub mod webhook;

use std::sync::Arc;

use bytes::Bytes;
use herald_core::provider::{BuildError, Provider, VendorRequest};
use serde::Deserialize;

pub use apns::{Apns, ApnsConfig};
pub use fcm::{Fcm, FcmConfig};
pub use sendgrid::{SendGrid, SendGridConfig};
pub use ses::{Ses, SesConfig};
pub use slack::{Slack, SlackConfig};
pub use smtp::{Smtp, SmtpConfig};
pub use sns::{Sns, SnsConfig};
pub use twilio::{Twilio, TwilioConfig};
pub use webhook::{Webhook, WebhookConfig};

/// `[providers.NAME]` in config: the vendor and its account settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    Sendgrid(SendGridConfig),
    Smtp(SmtpConfig),
    Ses(SesConfig),
    Twilio(TwilioConfig),
    Sns(SnsConfig),
    Fcm(FcmConfig),
    Apns(ApnsConfig),
    Webhook(WebhookConfig),
    Slack(SlackConfig),
}

impl ProviderConfig {
    /// The channel this kind of provider serves.
    pub fn channel(&self) -> herald_core::model::Channel {
        use herald_core::model::Channel;
        match self {
            ProviderConfig::Sendgrid(_) | ProviderConfig::Smtp(_) | ProviderConfig::Ses(_) => {
                Channel::Email
            }
            ProviderConfig::Twilio(_) | ProviderConfig::Sns(_) => Channel::Sms,
            ProviderConfig::Fcm(_) | ProviderConfig::Apns(_) => Channel::Push,
            ProviderConfig::Webhook(_) => Channel::Webhook,
            ProviderConfig::Slack(_) => Channel::Chat,
        }
    }
}

/// An account's settings are wrong: which account, and why.
#[derive(Debug, thiserror::Error)]
#[error("providers.{name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &str, reason: String) -> ConfigError {
        ConfigError {
            name: name.to_owned(),
            reason,
        }
    }
}

/// The one factory: a configured account becomes an adapter.
pub fn from_config(name: &str, cfg: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(match cfg {
        ProviderConfig::Sendgrid(c) => Arc::new(SendGrid::new(name, c.clone())?),
        ProviderConfig::Smtp(c) => Arc::new(Smtp::new(name, c.clone())?),
        ProviderConfig::Ses(c) => Arc::new(Ses::new(name, c.clone())?),
        ProviderConfig::Twilio(c) => Arc::new(Twilio::new(name, c.clone())?),
        ProviderConfig::Sns(c) => Arc::new(Sns::new(name, c.clone())?),
        ProviderConfig::Fcm(c) => Arc::new(Fcm::new(name, c.clone())?),
        ProviderConfig::Apns(c) => Arc::new(Apns::new(name, c.clone())?),
        ProviderConfig::Webhook(c) => Arc::new(Webhook::new(name, c.clone())?),
        ProviderConfig::Slack(c) => Arc::new(Slack::new(name, c.clone())?),
    })
}

pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Checks a configured base URL and trims its trailing slash.
pub(crate) fn base_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('/');
    if !(trimmed.starts_with("https://") || trimmed.starts_with("http://")) {
        return Err(format!(
            "base_url {s:?} must start with http:// or https://"
        ));
    }
    Ok(trimmed.to_owned())
}

/// A POST with the delivery key and a body; `headers` are the vendor's own.
pub(crate) fn post(
    url: &str,
    content_type: &str,
    delivery_key: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<VendorRequest, BuildError> {
    let mut b = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .header(IDEMPOTENCY_KEY, delivery_key);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::from(body))
        .map_err(|e| BuildError::Invalid(format!("cannot build request: {e}")))
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(v).map_err(|e| BuildError::Invalid(format!("cannot encode body: {e}")))
}

/// A vendor's error codes by what they mean for the message.
pub(crate) struct Codes<C: 'static> {
    /// "Slow down".
    pub rate_limited: &'static [C],
    /// No retry of the same message will fix it.
    pub permanent: &'static [C],
    /// The account's credential (bad, expired, revoked, or not allowed to
    /// send): the message is fine and waits.
    pub account: &'static [C],
    /// The address is dead (its owner opted out, it does not exist): the
    /// message fails and the address goes on the suppression list.
    pub gone: &'static [(C, herald_core::suppression::SuppressionReason)],
}

/// Classifies an error answer by the vendor's own error code when its tables
/// know the code, and by the HTTP status otherwise.
pub(crate) fn classify_code<C: PartialEq<K>, K: Copy>(
    resp: &herald_core::provider::VendorResponse,
    code: Option<K>,
    codes: &Codes<C>,
    reason: String,
) -> herald_core::provider::Outcome {
    use herald_core::provider::{classify_status, retry_after, Outcome};
    let listed = |table: &[C]| code.is_some_and(|c| table.iter().any(|t| *t == c));
    if listed(codes.rate_limited) {
        Outcome::RateLimited {
            retry_after: retry_after(&resp.headers),
            reason,
        }
    } else if listed(codes.account) {
        Outcome::Account { reason }
    } else if let Some(&(_, why)) = codes
        .gone
        .iter()
        .find(|(c, _)| code.is_some_and(|k| *c == k))
    {
        Outcome::Permanent {
            reason,
            gone: Some(why),
        }
    } else if listed(codes.permanent) {
        Outcome::permanent(reason)
    } else {
        classify_status(resp, reason)
    }
}

/// RFC 8058's pair for an email with a one-click unsubscribe URL:
/// `List-Unsubscribe: <url>` and `List-Unsubscribe-Post:
/// List-Unsubscribe=One-Click`. None without one.
pub(crate) fn unsubscribe_headers(
    msg: &herald_core::provider::OutboundMessage,
) -> Vec<(String, String)> {
    match &msg.unsubscribe {
        Some(url) => vec![
            ("List-Unsubscribe".to_owned(), format!("<{url}>")),
            (
                "List-Unsubscribe-Post".to_owned(),
                "List-Unsubscribe=One-Click".to_owned(),
            ),
        ],
        None => Vec::new(),
    }
}

/// Shortens a vendor's error text for the attempt log.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
pub(crate) mod testing {
    use herald_core::model::{Channel, Content, Priority};
    use herald_core::provider::{Address, OutboundMessage, VendorResponse};

    pub fn message(channel: Channel, address: Address) -> OutboundMessage {
        OutboundMessage {
            delivery_key: "0190a5e2-7c3b-7000-8000-000000000001".into(),
            notification_id: "0190a5e2-7c3b-7000-8000-0000000000aa".into(),
            tenant_id: "tenant-1".into(),
            channel,
            priority: Priority::Critical,
            category: Some("auth".into()),
            address,
            content: Content {
                subject: Some("Your code".into()),
                text: Some("Code: 123456 — ne le partagez pas 🔐".into()),
                html: Some("<p>Code: <b>123456</b></p>".into()),
            },
            metadata: Some(serde_json::from_value(serde_json::json!({"order": 42})).expect("map")),
            accepted_at_ms: 1_700_000_000_000,
            now_ms: 1_700_000_000_500,
            expires_at_ms: None,
            unsubscribe: None,
        }
    }

    pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> VendorResponse {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        VendorResponse {
            status: http::StatusCode::from_u16(status).expect("status"),
            headers: h,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }
}
