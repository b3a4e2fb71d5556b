//! The vendor extension point. An adapter builds the vendor's HTTP request
//! and classifies the vendor's response; the engine does the I/O, timing,
//! retries and (later) breaking. Keeping adapters pure makes every vendor's
//! wire format testable without a network.

use std::time::Duration;

use bytes::Bytes;

use crate::model::{Channel, Content, Priority, PushPlatform};
use crate::suppression::SuppressionReason;

/// The address one delivery goes to, already picked out of the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Email(String),
    Phone(String),
    Push {
        platform: PushPlatform,
        token: String,
    },
    Webhook(String),
    /// A Slack conversation id or incoming webhook URL.
    Chat(String),
}

/// Everything an adapter needs to build one vendor request.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// Stable for the delivery, across attempts and providers: the vendor
    /// idempotency key.
    pub delivery_key: String,
    pub notification_id: String,
    pub tenant_id: String,
    pub channel: Channel,
    pub priority: Priority,
    pub category: Option<String>,
    pub address: Address,
    /// Rendered content (templates are resolved before the adapter).
    pub content: Content,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the notification was accepted (Unix ms).
    pub accepted_at_ms: i64,
    /// When this attempt is made (Unix ms); signed into webhooks.
    pub now_ms: i64,
    /// When the notification stops being worth sending (Unix ms), if ever.
    /// Vendors that queue messages are told, so they drop a stale one too.
    pub expires_at_ms: Option<i64>,
    /// Email only: the recipient's one-click unsubscribe URL (RFC 8058),
    /// which email adapters send as `List-Unsubscribe` with
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
    pub unsubscribe: Option<String>,
}

/// The metadata key under which the API hands a notification's one-click
/// unsubscribe URL to the engine (`herald_` keys are refused from clients,
/// so only Herald sets it); the engine moves it to `unsubscribe`.
pub const UNSUBSCRIBE_KEY: &str = "herald_unsubscribe";

impl OutboundMessage {
    /// Whole seconds of life left (at least 1), if the message expires.
    pub fn seconds_left(&self) -> Option<u64> {
        let ms = self.expires_at_ms?.saturating_sub(self.now_ms).max(1);
        Some(u64::try_from(ms).unwrap_or(1).div_ceil(1000))
    }
}

/// A vendor request, ready for the engine's HTTP client.
pub type VendorRequest = http::Request<Bytes>;

/// What the vendor answered.
#[derive(Debug, Clone)]
pub struct VendorResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The classified outcome of one attempt. Kept as distinct outcomes so a
/// 429's Retry-After is honoured and a bad number is never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The vendor took the message; `vendor_id` is its message id if it gave one.
    Accepted { vendor_id: Option<String> },
    /// Worth trying again (5xx, timeout, connection trouble). `ambiguous`
    /// when the request may have reached the vendor (a timeout after sending).
    Transient { reason: String, ambiguous: bool },
    /// The vendor throttled us; try again after `retry_after` if it said.
    RateLimited {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Will never succeed as sent (invalid recipient, unregistered token,
    /// ...). `gone` when the vendor says the address itself is dead (a
    /// push token unregistered, a number that texted STOP): the engine
    /// adds it to the tenant's suppression list, so it is not sent to again.
    Permanent {
        reason: String,
        gone: Option<SuppressionReason>,
    },
    /// The vendor refused the account, not the message: a bad, expired or
    /// revoked credential, or one without the permission to send. Nothing
    /// was sent. It counts against the account's circuit (critical traffic
    /// fails over), and the message waits for the credential to be fixed
    /// or for its TTL, without using up its attempts.
    Account { reason: String },
}

impl Outcome {
    /// A permanent failure of the message alone.
    pub fn permanent(reason: impl Into<String>) -> Outcome {
        Outcome::Permanent {
            reason: reason.into(),
            gone: None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Transient { .. } => "transient",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Permanent { .. } => "permanent",
            Outcome::Account { .. } => "account",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Accepted { .. } => None,
            Outcome::Transient { reason, .. }
            | Outcome::RateLimited { reason, .. }
            | Outcome::Permanent { reason, .. }
            | Outcome::Account { reason } => Some(reason),
        }
    }
}

/// Why an adapter could not build a request. Always permanent for this
/// delivery: the same input would fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{0} cannot be sent on this provider")]
    WrongAddress(&'static str),
    #[error("missing content: {0}")]
    MissingContent(&'static str),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A short-lived access token an account gets from its vendor's token
/// endpoint (FCM's OAuth 2 token, for its service account's signed JWT),
/// which the engine keeps per account and puts on each request.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub value: crate::secret::Secret,
    /// When it was issued and when it stops working (Unix ms).
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

impl AccessToken {
    /// Whether to get a new one at `now_ms`: a quarter of its life before
    /// it expires, and at most five minutes before (an hour's token is
    /// renewed at 55 minutes).
    pub fn needs_renewal(&self, now_ms: i64) -> bool {
        let life = self.expires_at_ms - self.issued_at_ms;
        let margin = (life / 4).min(5 * 60_000);
        now_ms >= self.expires_at_ms - margin
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// Where an AWS account with no static keys gets its credentials: AWS's
/// standard chain, which the engine resolves (and renews) through the AWS
/// crates, handing them to the adapter as an `AccessToken` to sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsChain {
    pub region: String,
    pub profile: Option<String>,
    pub shared_credentials_file: Option<std::path::PathBuf>,
}

impl AwsChain {
    /// Credentials as an access token's value: key id, secret and session
    /// token, a line each.
    pub fn encode(key_id: &str, secret: &str, session_token: Option<&str>) -> String {
        format!("{key_id}\n{secret}\n{}", session_token.unwrap_or_default())
    }

    /// The credentials back from `encode`'s form.
    pub fn decode(value: &str) -> Option<(&str, &str, Option<&str>)> {
        let mut parts = value.splitn(3, '\n');
        let key_id = parts.next().filter(|k| !k.is_empty())?;
        let secret = parts.next().filter(|s| !s.is_empty())?;
        let token = parts.next().filter(|t| !t.is_empty());
        Some((key_id, secret, token))
    }
}

/// One vendor account. Implementations live in `herald-providers`.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The account's name in config (`[providers.NAME]`); a metrics label.
    fn name(&self) -> &str;
    /// The vendor's name (`sendgrid`, `twilio`, ...).
    fn vendor(&self) -> &'static str;
    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError>;
    fn classify(&self, resp: &VendorResponse) -> Outcome;

    /// Whether this account can send to `address` at all (APNs takes iOS
    /// device tokens only): a route passes over the accounts that cannot.
    fn takes(&self, _address: &Address) -> bool {
        true
    }

    /// For an account whose credential is an access token it gets from
    /// the vendor: the token request, its assertion signed at `now_ms`.
    /// `None` (the default) when every request carries the credential
    /// itself (`build`).
    fn token_request(&self, _now_ms: i64) -> Option<Result<VendorRequest, BuildError>> {
        None
    }

    /// The token endpoint's answer, received at `now_ms`: the token, or
    /// what the failure means (a refused grant is the account's).
    fn token_from(&self, resp: &VendorResponse, _now_ms: i64) -> Result<AccessToken, Outcome> {
        Err(classify_status(resp, "this provider takes no access token"))
    }

    /// For an account whose vendor posts receipts back (delivered, bounced,
    /// ...): what verifies and reads them. `None` (the default) for the
    /// others.
    fn receipt_parser(&self) -> Option<&dyn crate::receipt::ReceiptParser> {
        None
    }

    /// For an AWS account without static keys: where the engine gets its
    /// credentials (they come to `authorize` as an access token).
    fn aws_chain(&self) -> Option<&AwsChain> {
        None
    }

    /// Puts the access token on a request `build` made.
    fn authorize(&self, req: &mut VendorRequest, token: &AccessToken) -> Result<(), BuildError> {
        let value = http::HeaderValue::from_str(&format!("Bearer {}", token.value.expose()))
            .map_err(|_| BuildError::Invalid("the access token is not a valid header".into()))?;
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}

/// Parses `Retry-After` (seconds, or an HTTP date is treated as unknown).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The classification every vendor API shares for statuses its own error
/// codes do not refine: 2xx accepted, 429 throttled, 408/5xx transient,
/// 401/403 the account's (the credential, not the message), the other 4xx
/// permanent.
pub fn classify_status(resp: &VendorResponse, reason: impl Into<String>) -> Outcome {
    let s = resp.status;
    let reason = reason.into();
    if s.is_success() {
        Outcome::Accepted { vendor_id: None }
    } else if s == http::StatusCode::UNAUTHORIZED || s == http::StatusCode::FORBIDDEN {
        Outcome::Account { reason }
    } else if s == http::StatusCode::TOO_MANY_REQUESTS {
        Outcome::RateLimited {
            retry_after: retry_after(&resp.headers),
            reason,
        }
    } else if s.is_server_error() || s == http::StatusCode::REQUEST_TIMEOUT {
        Outcome::Transient {
            reason,
            ambiguous: false,
        }
    } else {
        Outcome::permanent(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, retry: Option<&str>) -> VendorResponse {
        let mut headers = http::HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_str(r).expect("ascii"),
            );
        }
        VendorResponse {
            status: http::StatusCode::from_u16(status).expect("valid status"),
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(classify_status(&resp(202, None), "").label(), "accepted");
        assert_eq!(classify_status(&resp(500, None), "").label(), "transient");
        assert_eq!(classify_status(&resp(503, None), "").label(), "transient");
        assert_eq!(classify_status(&resp(408, None), "").label(), "transient");
        assert_eq!(classify_status(&resp(400, None), "").label(), "permanent");
        assert_eq!(classify_status(&resp(401, None), "").label(), "account");
        assert_eq!(classify_status(&resp(403, None), "").label(), "account");
        assert_eq!(classify_status(&resp(404, None), "").label(), "permanent");
        assert_eq!(
            classify_status(&resp(429, Some("7")), "slow down"),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                reason: "slow down".into()
            }
        );
        assert_eq!(
            retry_after(&resp(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")).headers),
            None
        );
    }
}
