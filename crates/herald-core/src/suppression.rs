//! The suppression list: per tenant, the addresses Herald must not send to
//! again — a mailbox that bounced, a recipient who complained or texted
//! STOP, a push token its app no longer has, a webhook endpoint that said
//! it is gone — and those an operator added by hand. Sending to them again
//! is what gets a sender's domain and numbers blocked.
//!
//! An address is kept per channel in a normal form (`normalize`), so the
//! list and the delivery path compare the same strings.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Channel, UnknownName};
use crate::provider::Address;
use crate::validate::{
    check_chat_address, check_email, check_phone, check_push_token, check_webhook_url, Limits,
};

/// Why an address is suppressed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// A hard bounce: the mailbox or domain does not exist.
    Bounce,
    /// The recipient reported a message as spam.
    Complaint,
    /// The recipient opted out with the vendor (an SMS STOP reply).
    Unsubscribed,
    /// The push token is no longer registered with its app.
    Unregistered,
    /// The webhook endpoint answered 410 Gone.
    Gone,
    /// Added by an operator (the API or the CLI).
    Manual,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 6] = [
        SuppressionReason::Bounce,
        SuppressionReason::Complaint,
        SuppressionReason::Unsubscribed,
        SuppressionReason::Unregistered,
        SuppressionReason::Gone,
        SuppressionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::Bounce => "bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribed => "unsubscribed",
            SuppressionReason::Unregistered => "unregistered",
            SuppressionReason::Gone => "gone",
            SuppressionReason::Manual => "manual",
        }
    }
}

impl fmt::Display for SuppressionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SuppressionReason {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SuppressionReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub tenant_id: String,
    pub channel: Channel,
    /// In its normal form (`normalize`).
    pub address: String,
    pub reason: SuppressionReason,
    /// The vendor's words (its error or receipt), or the operator's note.
    pub detail: Option<String>,
    /// Who added it: a provider account's name, `api` or `cli`.
    pub source: String,
    /// When it was added (or last added again, with a new reason).
    pub created_at_ms: i64,
}

/// The form an address is kept and compared in: email addresses trimmed
/// and in lower case (mailbox providers treat the local part without
/// regard to case, and a bounce must catch `Ann@Example.com` as well as
/// `ann@example.com`); phone numbers, push tokens and webhook URLs
/// trimmed, as they are.
pub fn normalize(channel: Channel, address: &str) -> Cow<'_, str> {
    let trimmed = address.trim();
    match channel {
        Channel::Email if trimmed.chars().any(char::is_uppercase) => {
            Cow::Owned(trimmed.to_lowercase())
        }
        _ => Cow::Borrowed(trimmed),
    }
}

/// Whether `address` is one a notification could send to on `channel`,
/// by the rules the API applies to recipients: what an operator lists is
/// checked as strictly as what a notification carries.
pub fn check_address(channel: Channel, address: &str, limits: &Limits) -> Result<(), String> {
    let address = address.trim();
    match channel {
        Channel::Email => check_email(address).map_err(str::to_owned),
        Channel::Sms => check_phone(address).map_err(str::to_owned),
        Channel::Push => check_push_token(address).map_err(str::to_owned),
        Channel::Webhook => check_webhook_url(address, limits).map_err(|e| e.0),
        Channel::Chat => check_chat_address(address).map_err(str::to_owned),
    }
}

/// A delivery address's channel and normal form.
pub fn key_of(address: &Address) -> (Channel, Cow<'_, str>) {
    match address {
        Address::Email(a) => (Channel::Email, normalize(Channel::Email, a)),
        Address::Phone(a) => (Channel::Sms, normalize(Channel::Sms, a)),
        Address::Push { token, .. } => (Channel::Push, normalize(Channel::Push, token)),
        Address::Webhook(a) => (Channel::Webhook, normalize(Channel::Webhook, a)),
        Address::Chat(a) => (Channel::Chat, normalize(Channel::Chat, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PushPlatform;

    #[test]
    fn email_addresses_compare_without_case_and_the_rest_as_they_are() {
        assert_eq!(
            normalize(Channel::Email, " Ann@Example.COM "),
            "ann@example.com"
        );
        assert!(matches!(
            normalize(Channel::Email, "ann@example.com"),
            Cow::Borrowed(_)
        ));
        assert_eq!(normalize(Channel::Push, " AbC:dEf "), "AbC:dEf");
        assert_eq!(
            normalize(Channel::Webhook, "https://Hooks.example/X"),
            "https://Hooks.example/X"
        );
        let push = Address::Push {
            platform: PushPlatform::Ios,
            token: "T0k".into(),
        };
        assert_eq!(key_of(&push), (Channel::Push, Cow::Borrowed("T0k")));
        assert_eq!(
            key_of(&Address::Email("Ümlaut@Exämple.de".into())).1,
            "ümlaut@exämple.de"
        );
    }

    #[test]
    fn reasons_read_back_from_their_names() {
        for r in SuppressionReason::ALL {
            assert_eq!(r.as_str().parse::<SuppressionReason>(), Ok(r));
            assert_eq!(
                serde_json::to_value(r).ok(),
                Some(serde_json::json!(r.as_str()))
            );
        }
        assert!("hard_bounce".parse::<SuppressionReason>().is_err());
    }
}
