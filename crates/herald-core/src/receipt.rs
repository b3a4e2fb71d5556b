//! Receipts: what a vendor reports after it took a message — delivered,
//! bounced, a spam complaint, undeliverable — posted back to Herald's
//! `POST /v1/receipts/{provider}`. An adapter that takes receipts verifies
//! the vendor's signature and reads its events (`ReceiptParser`, no I/O);
//! the store applies them to their deliveries (`store::Receipts`).
//!
//! Receipts come late, twice, out of order, and even before the send's own
//! answer is recorded. Each kind has a rank, and a delivery keeps the
//! highest it has heard: a `delivered` that arrives after a bounce changes
//! nothing, the same receipt twice changes nothing the second time.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::DeliveryState;
use crate::suppression::SuppressionReason;

/// What a receipt says happened to a message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// It reached the handset or the mailbox server.
    Delivered,
    /// The vendor or the carrier could not deliver it (a blocked message,
    /// an unreachable handset, a soft bounce given up on).
    Undelivered,
    /// The mailbox does not exist (a hard bounce).
    Bounced,
    /// The recipient reported it as spam.
    Complained,
}

impl ReceiptKind {
    pub const ALL: [ReceiptKind; 4] = [
        ReceiptKind::Delivered,
        ReceiptKind::Undelivered,
        ReceiptKind::Bounced,
        ReceiptKind::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }

    /// The delivery state it puts a delivery in.
    pub fn state(self) -> DeliveryState {
        match self {
            ReceiptKind::Delivered => DeliveryState::Delivered,
            ReceiptKind::Undelivered => DeliveryState::Undelivered,
            ReceiptKind::Bounced => DeliveryState::Bounced,
            ReceiptKind::Complained => DeliveryState::Complained,
        }
    }

    /// Higher news replaces lower (`DeliveryState::receipt_rank`).
    pub fn rank(self) -> u8 {
        self.state().receipt_rank()
    }

    pub fn from_name(s: &str) -> Option<ReceiptKind> {
        ReceiptKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ReceiptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event a vendor reported, read from its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorReceipt {
    /// The delivery it is about: Herald sends its id with each message
    /// (a callback URL parameter, a custom argument) and the vendor echoes it.
    pub delivery_id: uuid::Uuid,
    /// What happened; `None` for an event that changes no state but may
    /// still list the address (an unsubscribe).
    pub kind: Option<ReceiptKind>,
    /// When the vendor says it happened (Unix ms).
    pub at_ms: i64,
    /// The vendor's words (its error code, the mail server's reply).
    pub reason: Option<String>,
    /// The address to put on the tenant's suppression list, and why.
    pub suppress: Option<(String, SuppressionReason)>,
}

/// A receipt request as it arrived: the URL the vendor called (as the
/// vendor saw it, for signatures over it), its headers and body.
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    pub url: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    pub now_ms: i64,
    /// The signing certificate the parser asked for (`certificate_url`),
    /// as the API fetched it; `None` for vendors that sign otherwise.
    pub certificate: Option<&'a [u8]>,
}

/// Why a receipt request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The signature is missing, wrong or too old: nothing is changed.
    #[error("the receipt's signature does not verify: {0}")]
    Unverified(String),
    /// Signed (or unsigned by design) but not what the vendor sends.
    #[error("the receipt cannot be read: {0}")]
    Malformed(String),
}

/// An account whose vendor posts receipts back: it verifies them and reads
/// their events. (A capability: providers without receipts do not have it.)
pub trait ReceiptParser: Send + Sync {
    fn receipts(&self, req: &InboundRequest<'_>) -> Result<Vec<VendorReceipt>, ReceiptError>;

    /// For a vendor that signs with a certificate it publishes (Amazon
    /// SNS): the certificate's URL, checked as one of the vendor's, which
    /// the API fetches (and caches) and hands over as
    /// `InboundRequest::certificate`. `None` (the default) for the others.
    fn certificate_url(&self, _req: &InboundRequest<'_>) -> Result<Option<String>, ReceiptError> {
        Ok(None)
    }

    /// For a vendor whose receipt subscriptions are confirmed by visiting
    /// a URL it sends (Amazon SNS): that URL, once the request verifies.
    fn subscribe_url(&self, _req: &InboundRequest<'_>) -> Result<Option<String>, ReceiptError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_news_of_higher_rank_wins_and_nothing_goes_back() {
        use DeliveryState::*;
        assert!(Sent.can_move_to(Delivered));
        assert!(Delivered.can_move_to(Bounced), "a bounce after delivery");
        assert!(Bounced.can_move_to(Complained));
        assert!(
            !Bounced.can_move_to(Delivered),
            "a late delivered changes nothing"
        );
        assert!(!Delivered.can_move_to(Delivered), "twice changes nothing");
        assert!(!Complained.can_move_to(Bounced));
        assert!(
            !Failed.can_move_to(Delivered),
            "a failed send has no receipts"
        );
        for k in ReceiptKind::ALL {
            assert_eq!(ReceiptKind::from_name(k.as_str()), Some(k));
            assert!(k.state().is_terminal());
        }
    }
}
