//! The generic webhook channel: a JSON POST to the recipient's `webhook_url`,
//! signed per Standard Webhooks (<https://www.standardwebhooks.com/>):
//! `webhook-id` (the delivery key, the same on every retry), `webhook-timestamp`
//! (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed with the base64 part of a `whsec_` secret.
//! Whether the target address is allowed is the engine's check at send time.

pub mod wire;

use base64::Engine as _;
use herald_core::provider::{
    classify_status, Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest,
    VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Metadata keys (reserved: `herald_` keys are Herald's) that make a webhook
/// one of Herald's own events: its `type`, and its `data`.
pub const EVENT_TYPE: &str = "herald_event";
pub const EVENT_DATA: &str = "herald_data";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `whsec_` followed by base64 of at least 24 random bytes.
    pub signing_secret: Secret,
    /// During a rotation, the secret being retired: requests are signed
    /// with both (Standard Webhooks lists several signatures), so a
    /// receiver holding either verifies them; remove it once every
    /// receiver has the new one.
    #[serde(default)]
    pub previous_signing_secret: Option<Secret>,
}

#[derive(Debug)]
pub struct Webhook {
    name: String,
    key: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl Webhook {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: WebhookConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: WebhookConfig) -> Result<Self, String> {
        let key = secret_key("signing_secret", &cfg.signing_secret)?;
        let previous = match cfg.previous_signing_secret.filter(|s| !s.is_empty()) {
            Some(s) => Some(secret_key("previous_signing_secret", &s)?),
            None => None,
        };
        Ok(Self {
            name: name.to_owned(),
            key,
            previous,
        })
    }

    /// The signature with the current secret.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        sign(&self.key, id, timestamp, body)
    }

    /// The `webhook-signature` value: the current secret's signature, then
    /// the retiring one's during a rotation, separated by a space.
    pub fn signatures(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let current = self.sign(id, timestamp, body);
        match &self.previous {
            Some(key) => format!("{current} {}", sign(key, id, timestamp, body)),
            None => current,
        }
    }
}

/// A `whsec_` secret's key bytes, or what is wrong with `setting`.
fn secret_key(setting: &str, secret: &Secret) -> Result<Vec<u8>, String> {
    let raw = secret.expose();
    let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
    let key = B64
        .decode(b64)
        .map_err(|_| format!("{setting} must be whsec_ followed by base64"))?;
    if key.len() < 24 {
        return Err(format!("{setting} must hold at least 24 bytes"));
    }
    Ok(key)
}

/// Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

impl Provider for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "webhook"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Webhook(url) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-webhook address"));
        };
        let timestamp = msg.now_ms.div_euclid(1000);
        let at = chrono::DateTime::from_timestamp_millis(msg.now_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // Herald's own events (a tenant's callback) carry their type and
        // data in its reserved metadata keys; anything else is a
        // notification.
        let own = msg.metadata.as_ref().and_then(|m| {
            let kind = m.get(EVENT_TYPE)?.as_str()?;
            Some((kind.to_owned(), m.get(EVENT_DATA)?.clone()))
        });
        let body = match own {
            Some((kind, data)) => crate::json(&serde_json::json!({
                "type": kind, "timestamp": at, "data": data
            }))?,
            None => crate::json(&wire::Event {
                kind: "notification".into(),
                timestamp: at,
                data: wire::Notification {
                    id: msg.notification_id.clone(),
                    delivery_id: msg.delivery_key.clone(),
                    priority: msg.priority.as_str().into(),
                    category: msg.category.clone(),
                    subject: msg.content.subject.clone(),
                    text: msg.content.text.clone(),
                    html: msg.content.html.clone(),
                    metadata: msg.metadata.clone(),
                },
            })?,
        };
        let signature = self.signatures(&msg.delivery_key, timestamp, &body);
        let ts = timestamp.to_string();
        crate::post(
            url,
            "application/json",
            &msg.delivery_key,
            &[
                ("webhook-id", &msg.delivery_key),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &signature),
            ],
            body,
        )
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        let reason = format!("webhook HTTP {}", resp.status.as_u16());
        match resp.status.as_u16() {
            // A receiver still busy with the same id, or "too early": worth a retry.
            409 | 425 => Outcome::Transient {
                reason,
                ambiguous: false,
            },
            // A receiver refusing the signature is its own configuration
            // (its circuit is the destination's, not an account's): the
            // message fails and can be replayed, as any refusal.
            401 | 403 => Outcome::permanent(reason),
            // The receiver says the endpoint is gone for good (Standard
            // Webhooks: stop sending to it): no message goes there again.
            410 => Outcome::Permanent {
                reason,
                gone: Some(SuppressionReason::Gone),
            },
            _ => classify_status(resp, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    #[test]
    fn signs_per_standard_webhooks() {
        // The example from the Standard Webhooks specification's reference tests.
        let hook = Webhook::new(
            "webhook",
            WebhookConfig {
                signing_secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                previous_signing_secret: None,
            },
        )
        .expect("valid secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            hook.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn builds_a_signed_post() {
        let hook = Webhook::new(
            "webhook",
            WebhookConfig {
                signing_secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                previous_signing_secret: None,
            },
        )
        .expect("valid secret");
        let msg = message(
            Channel::Webhook,
            Address::Webhook("https://hooks.example.com/in".into()),
        );
        let req = hook.build(&msg).expect("builds");
        assert_eq!(req.uri(), "https://hooks.example.com/in");
        let h = req.headers();
        assert_eq!(h["webhook-id"], msg.delivery_key.as_str());
        assert_eq!(h["idempotency-key"], msg.delivery_key.as_str());
        assert_eq!(h["webhook-timestamp"], "1700000000");
        let expected = hook.sign(&msg.delivery_key, 1_700_000_000, req.body());
        assert_eq!(h["webhook-signature"], expected.as_str());
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(body["type"], "notification");
        assert_eq!(body["data"]["priority"], "critical");
    }

    /// During a rotation both secrets sign: a receiver holding either one
    /// finds its signature in the list.
    #[test]
    fn signs_with_both_secrets_during_a_rotation() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let hook = Webhook::new(
            "webhook",
            WebhookConfig {
                signing_secret: Secret::new(new),
                previous_signing_secret: Some(Secret::new(old)),
            },
        )
        .expect("valid secrets");
        let msg = message(
            Channel::Webhook,
            Address::Webhook("https://hooks.example.com/in".into()),
        );
        let req = hook.build(&msg).expect("builds");
        let header = req.headers()["webhook-signature"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let listed: Vec<&str> = header.split(' ').collect();
        let key = |s: &str| B64.decode(&s["whsec_".len()..]).expect("base64");
        let by = |secret: &str| sign(&key(secret), &msg.delivery_key, 1_700_000_000, req.body());
        assert_eq!(listed, vec![by(new), by(old)], "the new one first");
        let bad = Webhook::new(
            "webhook",
            WebhookConfig {
                signing_secret: Secret::new(new),
                previous_signing_secret: Some(Secret::new("whsec_c2hvcnQ=")),
            },
        )
        .expect_err("a weak retiring secret");
        assert!(bad.to_string().contains("previous_signing_secret"), "{bad}");
    }

    #[test]
    fn refuses_weak_secrets_and_classifies() {
        let weak = Webhook::new(
            "w",
            WebhookConfig {
                signing_secret: Secret::new("whsec_c2hvcnQ="),
                previous_signing_secret: None,
            },
        );
        assert!(weak.is_err());
        let hook = Webhook::new(
            "w",
            WebhookConfig {
                signing_secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                previous_signing_secret: None,
            },
        )
        .expect("valid");
        assert_eq!(hook.classify(&response(204, &[], "")).label(), "accepted");
        assert_eq!(hook.classify(&response(410, &[], "")).label(), "permanent");
        assert_eq!(hook.classify(&response(409, &[], "")).label(), "transient");
    }
}
