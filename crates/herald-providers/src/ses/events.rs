//! Amazon SES's receipts. SES publishes each message's events (a
//! configuration set's event destination) to an Amazon SNS topic, and SNS
//! POSTs them to an HTTPS subscription: Herald's `POST /v1/receipts/NAME`.
//!
//! SNS signs every message: RSA PKCS#1 v1.5 over a canonical string of its
//! fields (SHA-1 for `SignatureVersion` 1, SHA-256 for 2), with the key in
//! an X.509 certificate SNS publishes at `SigningCertURL`. A message is
//! taken only when its topic is one the account lists, its certificate URL
//! is an SNS host's (`https://sns.<region>.amazonaws.com/…`), the
//! signature verifies with that certificate and it is under an hour old.
//! A signature proves SNS sent it, not whose topic it came from: anyone can
//! create a topic and subscribe Herald's URL, hence the topic list.
//! <https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>
//!
//! Fetching the certificate is I/O: the API does it (cached) between
//! `certificate_url` and `receipts`. A new subscription is confirmed by
//! visiting its `SubscribeURL` (`subscribe_url`), which the API does too.
//!
//! The event names its delivery through the `herald_delivery_key` message
//! tag SES sends back in `mail.tags` (event publishing carries tags; the
//! older identity feedback notifications do not, so they name no delivery).
//! <https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html>

use std::collections::HashMap;

use base64::Engine as _;
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptKind, VendorReceipt};
use herald_core::suppression::SuppressionReason;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde::Deserialize;
use x509_cert::der::{DecodePem, Encode};

/// How old a signed message may be. SNS retries a failed delivery for at
/// most an hour (its delivery policies cannot exceed 3,600 s); a captured
/// message replayed later (a bounce after the address was lifted) is
/// refused. Five minutes more for clocks that disagree.
pub const MAX_AGE_MS: i64 = 65 * 60_000;

/// What the account's settings say about receipts.
#[derive(Debug, Clone, Default)]
pub struct SnsReceipts {
    /// The topics SES publishes this account's events to (their ARNs).
    pub topic_arns: Vec<String>,
    /// URL prefixes a signing certificate or subscription URL may also come
    /// from, beyond SNS's own hosts (a test's local server).
    pub extra_url_prefixes: Vec<String>,
}

/// An SNS message as it is POSTed to a subscription.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(default, rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

impl Envelope {
    /// The canonical string SNS signs: each field's name and value on a
    /// line of its own, in this order, for the fields the type has.
    pub fn string_to_sign(&self) -> String {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        if self.kind == "Notification" {
            if let Some(s) = &self.subject {
                fields.push(("Subject", s));
            }
        } else {
            fields.push(("SubscribeURL", self.subscribe_url.as_deref().unwrap_or("")));
        }
        fields.push(("Timestamp", &self.timestamp));
        if self.kind != "Notification" {
            fields.push(("Token", self.token.as_deref().unwrap_or("")));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.kind));
        let mut out = String::new();
        for (name, value) in fields {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        out
    }
}

impl SnsReceipts {
    /// The message's signing certificate URL, once its topic and the URL
    /// itself are ones to trust.
    pub fn certificate_url(&self, req: &InboundRequest<'_>) -> Result<String, ReceiptError> {
        let env = envelope(req.body)?;
        self.check_topic(&env)?;
        if !self.trusted_url(&env.signing_cert_url, ".pem") {
            return Err(ReceiptError::Unverified(format!(
                "SigningCertURL {:?} is not an Amazon SNS certificate",
                env.signing_cert_url
            )));
        }
        Ok(env.signing_cert_url)
    }

    /// For a verified subscription confirmation: the URL that confirms it.
    pub fn subscribe_url(&self, req: &InboundRequest<'_>) -> Result<Option<String>, ReceiptError> {
        let env = self.verified(req)?;
        if env.kind != "SubscriptionConfirmation" {
            return Ok(None);
        }
        match env.subscribe_url {
            Some(u) if self.trusted_url(&u, "") => Ok(Some(u)),
            other => Err(ReceiptError::Malformed(format!(
                "SubscribeURL {other:?} is not an Amazon SNS URL"
            ))),
        }
    }

    /// A verified notification's receipts (none for other message types,
    /// and for SES events that change nothing: sends, opens, clicks).
    pub fn receipts(&self, req: &InboundRequest<'_>) -> Result<Vec<VendorReceipt>, ReceiptError> {
        let env = self.verified(req)?;
        if env.kind != "Notification" {
            return Ok(Vec::new());
        }
        let event: SesEvent = serde_json::from_str(&env.message).map_err(|e| {
            ReceiptError::Malformed(format!("the message is not an SES event: {e}"))
        })?;
        Ok(receipt(&event).into_iter().collect())
    }

    fn verified(&self, req: &InboundRequest<'_>) -> Result<Envelope, ReceiptError> {
        let env = envelope(req.body)?;
        self.check_topic(&env)?;
        let cert = req.certificate.ok_or_else(|| {
            ReceiptError::Unverified("the signing certificate was not fetched".into())
        })?;
        verify(&env, cert)?;
        let at_ms = rfc3339_ms(&env.timestamp)
            .ok_or_else(|| ReceiptError::Unverified("the Timestamp is not a date".into()))?;
        if (req.now_ms - at_ms).abs() > MAX_AGE_MS {
            return Err(ReceiptError::Unverified(format!(
                "signed at {}, more than {} minutes from now",
                env.timestamp,
                MAX_AGE_MS / 60_000
            )));
        }
        Ok(env)
    }

    fn check_topic(&self, env: &Envelope) -> Result<(), ReceiptError> {
        if self.topic_arns.contains(&env.topic_arn) {
            Ok(())
        } else {
            Err(ReceiptError::Unverified(format!(
                "topic {:?} is not one of this account's receipt_topic_arns",
                env.topic_arn
            )))
        }
    }

    /// An SNS host's HTTPS URL (`sns.<region>.amazonaws.com`, `.com.cn` in
    /// China), or one under a configured prefix; `suffix` for its path.
    fn trusted_url(&self, url: &str, suffix: &str) -> bool {
        if self.extra_url_prefixes.iter().any(|p| url.starts_with(p)) {
            return true;
        }
        let Ok(u) = url::Url::parse(url) else {
            return false;
        };
        let sns_host = u.host_str().is_some_and(|h| {
            let region = h
                .strip_prefix("sns.")
                .and_then(|r| {
                    r.strip_suffix(".amazonaws.com")
                        .or_else(|| r.strip_suffix(".amazonaws.com.cn"))
                })
                .unwrap_or("");
            region.len() >= 3
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        u.scheme() == "https"
            && sns_host
            && u.port().is_none()
            && u.username().is_empty()
            && u.path().ends_with(suffix)
    }
}

fn envelope(body: &[u8]) -> Result<Envelope, ReceiptError> {
    serde_json::from_slice(body)
        .map_err(|e| ReceiptError::Malformed(format!("not an Amazon SNS message: {e}")))
}

/// The signature checked with the certificate's RSA key.
fn verify(env: &Envelope, cert_pem: &[u8]) -> Result<(), ReceiptError> {
    let key = public_key(cert_pem).map_err(ReceiptError::Unverified)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(env.signature.trim())
        .ok()
        .and_then(|raw| Signature::try_from(raw.as_slice()).ok())
        .ok_or_else(|| ReceiptError::Unverified("the Signature is not base64".into()))?;
    let signed = env.string_to_sign();
    let ok = match env.signature_version.as_str() {
        "1" => VerifyingKey::<sha1::Sha1>::new(key).verify(signed.as_bytes(), &sig),
        "2" => VerifyingKey::<sha2::Sha256>::new(key).verify(signed.as_bytes(), &sig),
        v => {
            return Err(ReceiptError::Unverified(format!(
                "SignatureVersion {v:?} is not 1 or 2"
            )))
        }
    };
    ok.map_err(|_| ReceiptError::Unverified("the signature does not match".into()))
}

/// The RSA public key of a PEM certificate.
pub fn public_key(cert_pem: &[u8]) -> Result<RsaPublicKey, String> {
    let cert = x509_cert::Certificate::from_pem(cert_pem)
        .map_err(|e| format!("the signing certificate cannot be read: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("the signing certificate's key cannot be read: {e}"))?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| format!("the signing certificate's key is not RSA: {e}"))
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// An SES event (event publishing's `eventType`; identity notifications
/// name it `notificationType`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesEvent {
    #[serde(alias = "notificationType")]
    event_type: String,
    mail: Mail,
    #[serde(default)]
    bounce: Option<Bounce>,
    #[serde(default)]
    complaint: Option<Complaint>,
    #[serde(default)]
    delivery: Option<Delivery>,
    #[serde(default)]
    reject: Option<Reject>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mail {
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    tags: HashMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    bounce_type: String,
    #[serde(default)]
    bounce_sub_type: Option<String>,
    #[serde(default)]
    bounced_recipients: Vec<Recipient>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    email_address: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    diagnostic_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    #[serde(default)]
    complained_recipients: Vec<Recipient>,
    #[serde(default)]
    complaint_feedback_type: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    smtp_response: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reject {
    #[serde(default)]
    reason: Option<String>,
}

/// One SES event as a receipt; `None` for events about no Herald delivery
/// or that change nothing (Send, Open, Click, DeliveryDelay, …).
fn receipt(e: &SesEvent) -> Option<VendorReceipt> {
    let delivery_id = e
        .mail
        .tags
        .get("herald_delivery_key")
        .and_then(|v| v.first())
        .and_then(|k| uuid::Uuid::parse_str(k).ok())?;
    let (kind, suppress, reason, at) = match e.event_type.as_str() {
        "Delivery" => {
            let d = e.delivery.as_ref()?;
            let words = d.smtp_response.as_deref().unwrap_or("delivered");
            (ReceiptKind::Delivered, None, words.to_owned(), &d.timestamp)
        }
        "Bounce" => {
            let b = e.bounce.as_ref()?;
            let first = b.bounced_recipients.first();
            let words = [
                Some(b.bounce_type.as_str()),
                b.bounce_sub_type.as_deref(),
                first.and_then(|r| r.status.as_deref()),
                first.and_then(|r| r.diagnostic_code.as_deref()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
            // Only a permanent bounce says the address is dead; a transient
            // one (a full mailbox given up on) says the message was not
            // delivered.
            if b.bounce_type == "Permanent" {
                let who = first.map(|r| (r.email_address.clone(), SuppressionReason::Bounce));
                (ReceiptKind::Bounced, who, words, &b.timestamp)
            } else {
                (ReceiptKind::Undelivered, None, words, &b.timestamp)
            }
        }
        "Complaint" => {
            let c = e.complaint.as_ref()?;
            let who = c
                .complained_recipients
                .first()
                .map(|r| (r.email_address.clone(), SuppressionReason::Complaint));
            let words = c.complaint_feedback_type.as_deref().unwrap_or("complaint");
            (ReceiptKind::Complained, who, words.to_owned(), &c.timestamp)
        }
        "Reject" => {
            let words = e
                .reject
                .as_ref()
                .and_then(|r| r.reason.as_deref())
                .unwrap_or("rejected");
            (
                ReceiptKind::Undelivered,
                None,
                words.to_owned(),
                &e.mail.timestamp,
            )
        }
        _ => return None,
    };
    Some(VendorReceipt {
        delivery_id,
        kind: Some(kind),
        at_ms: at.as_deref().and_then(rfc3339_ms).unwrap_or(0),
        reason: Some(crate::clip(&format!(
            "ses {}: {reason}",
            e.event_type.to_ascii_lowercase()
        ))),
        suppress,
    })
}

/// Signs messages as SNS does, with the test certificate's key: for this
/// crate's tests and Herald's integration tests.
#[doc(hidden)]
pub mod testing {
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};

    use super::*;

    /// A self-signed certificate and its key, for tests only.
    pub const CERT_PEM: &str = include_str!("testdata/sns-test-cert.pem");
    const KEY_PEM: &str = include_str!("testdata/sns-test-key.pem");

    /// An SNS message's JSON with its `Signature` (version 2) over its
    /// fields; `cert_url` as `SigningCertURL`.
    pub fn signed_message(mut fields: serde_json::Value, cert_url: &str) -> String {
        fields["SignatureVersion"] = "2".into();
        fields["SigningCertURL"] = cert_url.into();
        fields["Signature"] = "".into();
        let env: Envelope = serde_json::from_value(fields.clone()).expect("an SNS message");
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_PEM).expect("the test key");
        let sig = SigningKey::<sha2::Sha256>::new(key).sign(env.string_to_sign().as_bytes());
        fields["Signature"] = base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .into();
        fields.to_string()
    }

    /// SES's event for `delivery` inside an SNS notification from `topic`.
    pub fn notification(topic: &str, event: serde_json::Value, at: &str) -> serde_json::Value {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": uuid::Uuid::new_v4().to_string(),
            "TopicArn": topic,
            "Message": event.to_string(),
            "Timestamp": at,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        })
    }
}

#[cfg(test)]
mod tests {
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use serde_json::json;

    use super::testing::*;
    use super::*;

    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";
    const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem";
    const AT: &str = "2026-12-05T04:00:00.000Z";
    const DELIVERY: &str = "0190a5e2-7c3b-7000-8000-000000000001";

    fn receipts_cfg() -> SnsReceipts {
        SnsReceipts {
            topic_arns: vec![TOPIC.into()],
            extra_url_prefixes: vec![],
        }
    }

    fn now() -> i64 {
        rfc3339_ms(AT).expect("date") + 2_000
    }

    fn req<'a>(
        body: &'a str,
        headers: &'a http::HeaderMap,
        cert: Option<&'a [u8]>,
    ) -> InboundRequest<'a> {
        InboundRequest {
            url: "https://herald.example/v1/receipts/ses",
            headers,
            body: body.as_bytes(),
            now_ms: now(),
            certificate: cert,
        }
    }

    fn bounce(kind: &str) -> serde_json::Value {
        json!({
            "eventType": "Bounce",
            "bounce": {
                "bounceType": kind, "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": "gone@example.com", "action": "failed",
                    "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                "timestamp": "2026-12-05T03:59:58.000Z", "feedbackId": "0100"
            },
            "mail": {"timestamp": "2026-12-05T03:59:50.000Z", "messageId": "EXAMPLE",
                "destination": ["gone@example.com"],
                "tags": {"ses:configuration-set": ["herald"], "herald_delivery_key": [DELIVERY]}}
        })
    }

    #[test]
    fn a_signed_permanent_bounce_is_a_bounce_and_lists_the_address() {
        let body = signed_message(notification(TOPIC, bounce("Permanent"), AT), CERT_URL);
        let h = http::HeaderMap::new();
        let cfg = receipts_cfg();
        assert_eq!(
            cfg.certificate_url(&req(&body, &h, None)).as_deref(),
            Ok(CERT_URL)
        );
        let got = cfg
            .receipts(&req(&body, &h, Some(CERT_PEM.as_bytes())))
            .expect("verifies");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].delivery_id.to_string(), DELIVERY);
        assert_eq!(got[0].kind, Some(ReceiptKind::Bounced));
        assert_eq!(
            got[0].suppress,
            Some(("gone@example.com".into(), SuppressionReason::Bounce))
        );
        assert_eq!(
            got[0].at_ms,
            rfc3339_ms("2026-12-05T03:59:58.000Z").expect("date")
        );
        assert!(got[0].reason.as_deref().expect("words").contains("5.1.1"));
        // A transient bounce lists nobody.
        let body = signed_message(notification(TOPIC, bounce("Transient"), AT), CERT_URL);
        let got = cfg
            .receipts(&req(&body, &h, Some(CERT_PEM.as_bytes())))
            .expect("verifies");
        assert_eq!(got[0].kind, Some(ReceiptKind::Undelivered));
        assert_eq!(got[0].suppress, None);
    }

    #[test]
    fn version_1_signatures_use_sha1() {
        let mut fields = notification(TOPIC, bounce("Permanent"), AT);
        fields["SignatureVersion"] = "1".into();
        fields["SigningCertURL"] = CERT_URL.into();
        fields["Signature"] = "".into();
        let env: Envelope = serde_json::from_value(fields.clone()).expect("message");
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("testdata/sns-test-key.pem"))
            .expect("key");
        let sig = SigningKey::<sha1::Sha1>::new(key).sign(env.string_to_sign().as_bytes());
        fields["Signature"] = base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .into();
        let body = fields.to_string();
        let h = http::HeaderMap::new();
        let got = receipts_cfg().receipts(&req(&body, &h, Some(CERT_PEM.as_bytes())));
        assert_eq!(got.map(|r| r.len()), Ok(1));
    }

    #[test]
    fn forged_altered_foreign_or_stale_messages_are_refused() {
        let h = http::HeaderMap::new();
        let cfg = receipts_cfg();
        let cert = Some(CERT_PEM.as_bytes());
        let good = signed_message(notification(TOPIC, bounce("Permanent"), AT), CERT_URL);

        // A field changed after signing.
        let altered = good.replace("gone@example.com", "someone-else@example.com");
        assert!(matches!(
            cfg.receipts(&req(&altered, &h, cert)),
            Err(ReceiptError::Unverified(_))
        ));
        // Another topic, even well signed.
        let foreign = signed_message(
            notification(
                "arn:aws:sns:us-east-1:999999999999:evil",
                bounce("Permanent"),
                AT,
            ),
            CERT_URL,
        );
        assert!(matches!(
            cfg.certificate_url(&req(&foreign, &h, None)),
            Err(ReceiptError::Unverified(_))
        ));
        // A certificate from anywhere but SNS.
        for url in [
            "https://evil.example/cert.pem",
            "http://sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
            "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
            "https://user@sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com/cert.txt",
        ] {
            let body = signed_message(notification(TOPIC, bounce("Permanent"), AT), url);
            assert!(
                cfg.certificate_url(&req(&body, &h, None)).is_err(),
                "{url} is not SNS's"
            );
        }
        // No certificate fetched, or another certificate.
        assert!(cfg.receipts(&req(&good, &h, None)).is_err());
        // Too old.
        let mut stale = req(&good, &h, cert);
        stale.now_ms += MAX_AGE_MS + 60_000;
        assert!(matches!(
            cfg.receipts(&stale),
            Err(ReceiptError::Unverified(_))
        ));
        // Not SNS at all.
        assert!(matches!(
            cfg.receipts(&req("{\"hello\": 1}", &h, cert)),
            Err(ReceiptError::Malformed(_))
        ));
    }

    #[test]
    fn a_subscription_confirmation_gives_its_url_and_no_receipts() {
        let sub =
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t";
        let body = signed_message(
            json!({
                "Type": "SubscriptionConfirmation",
                "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
                "Token": "2336412f37",
                "TopicArn": TOPIC,
                "Message": "You have chosen to subscribe to the topic.",
                "SubscribeURL": sub,
                "Timestamp": AT,
            }),
            CERT_URL,
        );
        let h = http::HeaderMap::new();
        let cfg = receipts_cfg();
        let cert = Some(CERT_PEM.as_bytes());
        assert_eq!(
            cfg.subscribe_url(&req(&body, &h, cert)),
            Ok(Some(sub.into()))
        );
        assert_eq!(cfg.receipts(&req(&body, &h, cert)), Ok(vec![]));
        // A notification confirms nothing.
        let n = signed_message(notification(TOPIC, bounce("Permanent"), AT), CERT_URL);
        assert_eq!(cfg.subscribe_url(&req(&n, &h, cert)), Ok(None));
    }

    #[test]
    fn ses_events_map_to_receipts() {
        let with = |event: serde_json::Value| {
            let mut e = event;
            e["mail"] = json!({"messageId": "m", "timestamp": "2026-12-05T03:59:50.000Z",
                "tags": {"herald_delivery_key": [DELIVERY]}});
            receipt(&serde_json::from_value(e).expect("an SES event"))
        };
        let complaint = with(json!({"eventType": "Complaint", "complaint": {
            "complainedRecipients": [{"emailAddress": "a@example.com"}],
            "complaintFeedbackType": "abuse", "timestamp": "2026-12-05T04:00:00.000Z"}}))
        .expect("a receipt");
        assert_eq!(complaint.kind, Some(ReceiptKind::Complained));
        assert_eq!(
            complaint.suppress,
            Some(("a@example.com".into(), SuppressionReason::Complaint))
        );
        let delivered = with(json!({"eventType": "Delivery", "delivery": {
            "timestamp": "2026-12-05T04:00:00.000Z", "recipients": ["a@example.com"],
            "smtpResponse": "250 2.6.0 Message received"}}))
        .expect("a receipt");
        assert_eq!(delivered.kind, Some(ReceiptKind::Delivered));
        let rejected = with(json!({"eventType": "Reject", "reject": {"reason": "Bad content"}}))
            .expect("a receipt");
        assert_eq!(rejected.kind, Some(ReceiptKind::Undelivered));
        for nothing in ["Send", "Open", "Click", "DeliveryDelay", "Subscription"] {
            assert_eq!(with(json!({"eventType": nothing})), None, "{nothing}");
        }
        // Identity notifications carry no tags: no delivery to name.
        let untagged: SesEvent = serde_json::from_value(json!({"notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": []},
            "mail": {"messageId": "m"}}))
        .expect("an SES notification");
        assert_eq!(receipt(&untagged), None);
    }
}
