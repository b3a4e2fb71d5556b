//! SendGrid's signed Event Webhook: a JSON array of events, signed with
//! ECDSA P-256 over the `X-Twilio-Email-Event-Webhook-Timestamp` header and
//! the raw body (SHA-256), the signature in
//! `X-Twilio-Email-Event-Webhook-Signature` (base64 DER), checked with the
//! public key SendGrid shows for the webhook (base64 DER).
//! <https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features>
//!
//! Each event echoes the message's custom arguments, so
//! `herald_delivery_key` names the delivery.

use base64::Engine as _;
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptKind, VendorReceipt};
use herald_core::suppression::SuppressionReason;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use super::wire::Event;

pub const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
/// How old a signed request may be: a captured one replayed later (a bounce
/// after the address was lifted) is refused.
pub const MAX_AGE_MS: i64 = 15 * 60_000;

/// The webhook's verification key, from its base64 DER form.
pub fn verifying_key(b64: &str) -> Result<VerifyingKey, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("event_webhook_public_key is not base64: {e}"))?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|e| format!("event_webhook_public_key is not a P-256 public key: {e}"))
}

pub fn receipts(
    key: &VerifyingKey,
    req: &InboundRequest<'_>,
) -> Result<Vec<VendorReceipt>, ReceiptError> {
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ReceiptError::Unverified(format!("no {name} header")))
    };
    let timestamp = header(TIMESTAMP)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(header(SIGNATURE)?.trim())
        .ok()
        .and_then(|der| Signature::from_der(&der).ok())
        .ok_or_else(|| {
            ReceiptError::Unverified("the signature is not a DER ECDSA signature".into())
        })?;
    let signed: Vec<u8> = [timestamp.as_bytes(), req.body].concat();
    key.verify(&signed, &signature)
        .map_err(|_| ReceiptError::Unverified("the signature does not match".into()))?;
    let at_ms = timestamp
        .trim()
        .parse::<i64>()
        .map_err(|_| ReceiptError::Unverified("the timestamp is not a number".into()))?
        .saturating_mul(1000);
    if (req.now_ms - at_ms).abs() > MAX_AGE_MS {
        return Err(ReceiptError::Unverified(format!(
            "signed at {at_ms} ms, more than {} minutes from now",
            MAX_AGE_MS / 60_000
        )));
    }
    let events: Vec<Event> = serde_json::from_slice(req.body)
        .map_err(|e| ReceiptError::Malformed(format!("not an array of events: {e}")))?;
    Ok(events.iter().filter_map(receipt).collect())
}

/// One event as a receipt; `None` for events about no Herald delivery, or
/// that change nothing (processed, deferred, open, click).
fn receipt(e: &Event) -> Option<VendorReceipt> {
    let delivery_id = uuid::Uuid::parse_str(e.herald_delivery_key.as_deref()?).ok()?;
    let (kind, suppress) = match (e.event.as_str(), e.kind.as_deref()) {
        ("delivered", _) => (Some(ReceiptKind::Delivered), None),
        // A block (the receiving server refused it for now, or for its
        // content) says nothing against the address.
        ("bounce", Some("blocked")) => (Some(ReceiptKind::Undelivered), None),
        ("bounce", _) => (Some(ReceiptKind::Bounced), Some(SuppressionReason::Bounce)),
        ("dropped", _) => (Some(ReceiptKind::Undelivered), None),
        ("spamreport", _) => (
            Some(ReceiptKind::Complained),
            Some(SuppressionReason::Complaint),
        ),
        ("unsubscribe", _) => (None, Some(SuppressionReason::Unsubscribed)),
        _ => return None,
    };
    let words = [
        e.status.as_deref(),
        e.reason.as_deref(),
        e.response.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let reason = if words.is_empty() {
        format!("sendgrid {}", e.event)
    } else {
        format!("sendgrid {}: {words}", e.event)
    };
    Some(VendorReceipt {
        delivery_id,
        kind,
        at_ms: e.timestamp.unwrap_or(0).saturating_mul(1000),
        reason: Some(crate::clip(&reason)),
        suppress: suppress.and_then(|why| Some((e.email.clone()?, why))),
    })
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    use super::*;

    fn key() -> (SigningKey, VerifyingKey) {
        let signing = SigningKey::from_slice(&[7u8; 32]).expect("a valid scalar");
        let der = signing
            .verifying_key()
            .to_public_key_der()
            .expect("encodes");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        (signing, verifying_key(&b64).expect("reads back"))
    }

    fn signed(signing: &SigningKey, ts: &str, body: &str) -> http::HeaderMap {
        let sig: Signature = signing.sign([ts.as_bytes(), body.as_bytes()].concat().as_slice());
        let mut h = http::HeaderMap::new();
        h.insert(TIMESTAMP, ts.parse().expect("ascii"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        h.insert(SIGNATURE, b64.parse().expect("ascii"));
        h
    }

    const NOW_S: i64 = 1_790_000_000;

    fn read(headers: &http::HeaderMap, body: &str) -> Result<Vec<VendorReceipt>, ReceiptError> {
        let (_, verifying) = key();
        receipts(
            &verifying,
            &InboundRequest {
                url: "https://h.example/v1/receipts/sendgrid",
                headers,
                body: body.as_bytes(),
                now_ms: NOW_S * 1000,
                certificate: None,
            },
        )
    }

    #[test]
    fn signed_events_become_receipts_and_anything_else_is_refused() {
        let (signing, _) = key();
        let d = "0192f5a4-0000-7000-8000-000000000001";
        let body = format!(
            r#"[{{"email":"ann@example.com","timestamp":{NOW_S},"event":"processed","herald_delivery_key":"{d}"}},
                {{"email":"ann@example.com","timestamp":{NOW_S},"event":"delivered","response":"250 OK","herald_delivery_key":"{d}"}},
                {{"email":"bob@example.com","timestamp":{NOW_S},"event":"bounce","type":"bounce","status":"5.1.1","reason":"550 no such user","herald_delivery_key":"{d}"}},
                {{"email":"cy@example.com","timestamp":{NOW_S},"event":"bounce","type":"blocked","herald_delivery_key":"{d}"}},
                {{"email":"di@example.com","timestamp":{NOW_S},"event":"spamreport","herald_delivery_key":"{d}"}},
                {{"email":"ed@example.com","timestamp":{NOW_S},"event":"delivered"}}]"#
        );
        let ts = NOW_S.to_string();
        let got = read(&signed(&signing, &ts, &body), &body).expect("verified");
        let kinds: Vec<Option<ReceiptKind>> = got.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Some(ReceiptKind::Delivered),
                Some(ReceiptKind::Bounced),
                Some(ReceiptKind::Undelivered),
                Some(ReceiptKind::Complained)
            ],
            "processed changes nothing; an event without Herald's key is not Herald's"
        );
        assert_eq!(
            got[1].suppress,
            Some(("bob@example.com".into(), SuppressionReason::Bounce))
        );
        assert_eq!(
            got[2].suppress, None,
            "a block says nothing against the address"
        );
        assert_eq!(
            got[3].suppress,
            Some(("di@example.com".into(), SuppressionReason::Complaint))
        );
        assert_eq!(got[1].at_ms, NOW_S * 1000);
        assert!(got[1]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("5.1.1") && r.contains("no such user")));

        // A body changed after signing, a signature of another body, none,
        // and one signed long ago: all refused.
        let tampered = body.replace(
            "bounce\",\"type\":\"bounce",
            "delivered\",\"type\":\"bounce",
        );
        assert!(matches!(
            read(&signed(&signing, &ts, &body), &tampered),
            Err(ReceiptError::Unverified(_))
        ));
        assert!(matches!(
            read(&http::HeaderMap::new(), &body),
            Err(ReceiptError::Unverified(_))
        ));
        let old = (NOW_S - 3_600).to_string();
        assert!(matches!(
            read(&signed(&signing, &old, &body), &body),
            Err(ReceiptError::Unverified(_))
        ));
        let other = SigningKey::from_slice(&[9u8; 32]).expect("a valid scalar");
        assert!(matches!(
            read(&signed(&other, &ts, &body), &body),
            Err(ReceiptError::Unverified(_))
        ));
        // Signed but not events.
        let junk = r#"{"not": "an array"}"#;
        assert!(matches!(
            read(&signed(&signing, &ts, junk), junk),
            Err(ReceiptError::Malformed(_))
        ));
    }

    #[test]
    fn a_key_that_is_not_p256_is_refused_at_start_up() {
        assert!(verifying_key("bm90IGEga2V5").is_err());
        assert!(verifying_key("%%%").is_err());
    }
}
