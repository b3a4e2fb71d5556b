//! Apple Push Notification service, over HTTP/2 with token-based auth: a
//! provider token (a JWT signed ES256 with the team's `.p8` key, `kid` the
//! key's id, `iss` the team id) in `authorization: bearer`, made here from
//! the key and reused: Apple takes one for an hour and refuses new ones
//! more often than every 20 minutes, so each lasts 50. The engine sends
//! over HTTP/2 (APNs speaks nothing else).
//! <https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns>
//!
//! APNs has no idempotency key; `apns-id` is the delivery key, the same on
//! every attempt, and the app sees it with the notification.

pub mod wire;

use std::path::PathBuf;
use std::sync::Mutex;

use herald_core::model::{Priority, PushPlatform};
use herald_core::provider::{
    Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest, VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com`
    /// for development builds of the app.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` key Apple's developer site gives (PKCS#8 PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key's PEM itself (e.g. `HERALD__PROVIDERS__APNS__KEY_PEM`).
    #[serde(default)]
    pub key_pem: Option<Secret>,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
}

fn default_base_url() -> String {
    "https://api.push.apple.com".into()
}

/// How long a provider token is used (Apple: at most an hour, and not
/// renewed more often than every 20 minutes).
const TOKEN_REUSE_MS: i64 = 50 * 60_000;

/// APNs' error reasons by what they mean for the message.
/// <https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns>
const CODES: crate::Codes<&str> = crate::Codes {
    rate_limited: &["TooManyRequests", "TooManyProviderTokenUpdates"],
    permanent: &[
        "BadCollapseId",
        "BadExpirationDate",
        "BadMessageId",
        "BadPriority",
        "BadTopic",
        "DeviceTokenNotForTopic",
        "DuplicateHeaders",
        "IdleTimeout",
        "InvalidPushType",
        "MissingDeviceToken",
        "MissingTopic",
        "PayloadEmpty",
        "TopicDisallowed",
        "BadPath",
        "MethodNotAllowed",
        "PayloadTooLarge",
    ],
    account: &[
        "InvalidProviderToken",
        "ExpiredProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
    ],
    // The app is gone from the device, or the token is not one.
    gone: &[
        ("Unregistered", SuppressionReason::Unregistered),
        ("BadDeviceToken", SuppressionReason::Unregistered),
        ("ExpiredToken", SuppressionReason::Unregistered),
    ],
};

pub struct Apns {
    name: String,
    base: String,
    team_id: String,
    key_id: String,
    key: EncodingKey,
    topic: String,
    /// The provider token in use and when it was made (Unix ms).
    token: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("name", &self.name)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: ApnsConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: ApnsConfig) -> Result<Self, String> {
        if cfg.team_id.is_empty() || cfg.key_id.is_empty() || cfg.topic.is_empty() {
            return Err("team_id, key_id and topic are required".into());
        }
        let pem = match (&cfg.key_pem, &cfg.key_file) {
            (Some(p), _) if !p.is_empty() => p.expose().as_bytes().to_vec(),
            (_, Some(path)) => {
                std::fs::read(path).map_err(|e| format!("key_file {}: {e}", path.display()))?
            }
            _ => return Err("a key_file (the .p8 key) or key_pem is required".into()),
        };
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| format!("the key is not a PKCS#8 EC (P-256) key: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            base: crate::base_url(&cfg.base_url)?,
            team_id: cfg.team_id,
            key_id: cfg.key_id,
            key,
            topic: cfg.topic,
            token: Mutex::new(None),
        })
    }

    /// The provider token for a request made at `now_ms`: the one in use,
    /// or a new one once it is 50 minutes old.
    fn provider_token(&self, now_ms: i64) -> Result<String, BuildError> {
        let mut held = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, made)) = held.as_ref() {
            if now_ms - made < TOKEN_REUSE_MS && now_ms >= *made {
                return Ok(t.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = wire::Claims {
            iss: self.team_id.clone(),
            iat: now_ms.div_euclid(1000),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| BuildError::Invalid(format!("cannot sign the provider token: {e}")))?;
        *held = Some((token.clone(), now_ms));
        Ok(token)
    }
}

impl Provider for Apns {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "apns"
    }

    fn takes(&self, address: &Address) -> bool {
        matches!(
            address,
            Address::Push {
                platform: PushPlatform::Ios,
                ..
            }
        )
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Push {
            platform: PushPlatform::Ios,
            token,
        } = &msg.address
        else {
            return Err(BuildError::WrongAddress("anything but an iOS device token"));
        };
        let alert = wire::Alert {
            title: msg.content.subject.clone(),
            body: msg.content.text.clone(),
        };
        if alert.title.is_none() && alert.body.is_none() {
            return Err(BuildError::MissingContent("subject or text"));
        }
        let mut payload = serde_json::Map::new();
        if let Some(meta) = &msg.metadata {
            for (k, v) in meta {
                if k != "aps" {
                    payload.insert(k.clone(), v.clone());
                }
            }
        }
        payload.insert(
            "herald_delivery_key".into(),
            serde_json::Value::String(msg.delivery_key.clone()),
        );
        let aps = serde_json::to_value(wire::Aps { alert })
            .map_err(|e| BuildError::Invalid(format!("cannot encode aps: {e}")))?;
        payload.insert("aps".into(), aps);
        let body = crate::json(&payload)?;
        if body.len() > MAX_PAYLOAD_BYTES {
            return Err(BuildError::Invalid(format!(
                "the payload is {} bytes, over APNs' {MAX_PAYLOAD_BYTES}",
                body.len()
            )));
        }
        // Critical and high lanes go at once; the others may be delivered
        // when the device saves power.
        let priority = match msg.priority {
            Priority::Critical | Priority::High => "10",
            Priority::Normal | Priority::Low => "5",
        };
        // APNs keeps a message for an offline device until it expires
        // (0: only now).
        let expiration = msg
            .expires_at_ms
            .map_or(0, |ms| ms.div_euclid(1000))
            .to_string();
        let bearer = format!("bearer {}", self.provider_token(msg.now_ms)?);
        let mut headers: Vec<(&str, &str)> = vec![
            ("authorization", &bearer),
            ("apns-topic", &self.topic),
            ("apns-push-type", "alert"),
            ("apns-priority", priority),
            ("apns-expiration", &expiration),
            ("apns-id", &msg.delivery_key),
        ];
        let collapse = msg
            .metadata
            .as_ref()
            .and_then(|m| m.get("collapse_id"))
            .and_then(|v| v.as_str())
            .filter(|c| c.len() <= 64);
        if let Some(c) = collapse {
            headers.push(("apns-collapse-id", c));
        }
        let url = format!("{}/3/device/{token}", self.base);
        crate::post(&url, "application/json", &msg.delivery_key, &headers, body)
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = resp
                .headers
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Outcome::Accepted { vendor_id };
        }
        let err = serde_json::from_slice::<wire::ErrorBody>(&resp.body).ok();
        let reason = crate::clip(&match &err {
            Some(e) => format!("apns {} {}", resp.status.as_u16(), e.reason),
            None => format!("apns HTTP {}", resp.status.as_u16()),
        });
        let code = err.as_ref().map(|e| e.reason.as_str());
        crate::classify_code(resp, code, &CODES, reason)
    }
}

/// The largest payload APNs takes for an alert (4 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    use super::*;
    use crate::testing::{message, response};

    fn keys() -> (String, String) {
        let k = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).expect("a valid scalar");
        let private = k.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
        let public = k
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        (private, public)
    }

    fn adapter() -> Apns {
        Apns::new(
            "apns",
            ApnsConfig {
                base_url: "https://api.sandbox.push.apple.com".into(),
                team_id: "TEAM123456".into(),
                key_id: "KEY1234567".into(),
                key_file: None,
                key_pem: Some(Secret::new(keys().0)),
                topic: "com.example.shop".into(),
            },
        )
        .expect("valid config")
    }

    fn ios(token: &str) -> Address {
        Address::Push {
            platform: PushPlatform::Ios,
            token: token.into(),
        }
    }

    #[test]
    fn builds_an_alert_with_apples_headers_and_a_signed_provider_token() {
        let apns = adapter();
        let mut m = message(Channel::Push, ios("a1b2c3"));
        m.expires_at_ms = Some(1_700_000_300_000);
        let req = apns.build(&m).expect("builds");
        assert_eq!(
            req.uri(),
            "https://api.sandbox.push.apple.com/3/device/a1b2c3"
        );
        let h = req.headers();
        assert_eq!(h["apns-topic"], "com.example.shop");
        assert_eq!(h["apns-push-type"], "alert");
        assert_eq!(h["apns-priority"], "10", "critical goes at once");
        assert_eq!(h["apns-expiration"], "1700000300");
        assert_eq!(h["apns-id"], m.delivery_key.as_str());
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(body["aps"]["alert"]["title"], "Your code");
        assert_eq!(body["herald_delivery_key"], m.delivery_key.as_str());
        assert_eq!(body["order"], 42, "metadata rides along as it is");

        // The token: ES256, kid and iss as Apple reads them, valid with
        // the key's public half; reused, not remade, for the next message.
        let bearer = h["authorization"].to_str().expect("ascii");
        let jwt = bearer.strip_prefix("bearer ").expect("a bearer token");
        let header = jsonwebtoken::decode_header(jwt).expect("a JWT");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
        let key = DecodingKey::from_ec_pem(keys().1.as_bytes()).expect("public key");
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<wire::Claims>(jwt, &key, &v).expect("verifies");
        assert_eq!(claims.claims.iss, "TEAM123456");
        assert_eq!(claims.claims.iat, m.now_ms / 1000);
        let mut later = m.clone();
        later.now_ms += 49 * 60_000;
        let again = apns.build(&later).expect("builds");
        assert_eq!(again.headers()["authorization"], h["authorization"]);
        later.now_ms += 2 * 60_000;
        let renewed = apns.build(&later).expect("builds");
        assert_ne!(
            renewed.headers()["authorization"],
            h["authorization"],
            "renewed at 50 min"
        );
    }

    #[test]
    fn takes_ios_tokens_only_and_normal_waits_for_power() {
        let apns = adapter();
        assert!(apns.takes(&ios("x")));
        let android = Address::Push {
            platform: PushPlatform::Android,
            token: "x".into(),
        };
        assert!(!apns.takes(&android));
        assert!(apns.build(&message(Channel::Push, android)).is_err());
        let mut m = message(Channel::Push, ios("x"));
        m.priority = Priority::Normal;
        assert_eq!(
            apns.build(&m).expect("builds").headers()["apns-priority"],
            "5"
        );
    }

    #[test]
    fn answers_classify_by_apples_reasons() {
        let apns = adapter();
        let err = |status: u16, reason: &str| {
            apns.classify(&response(
                status,
                &[],
                &format!(r#"{{"reason":"{reason}"}}"#),
            ))
        };
        assert_eq!(
            apns.classify(&response(200, &[("apns-id", "ABC")], "")),
            Outcome::Accepted {
                vendor_id: Some("ABC".into())
            }
        );
        assert!(matches!(
            err(410, "Unregistered"),
            Outcome::Permanent {
                gone: Some(SuppressionReason::Unregistered),
                ..
            }
        ));
        assert!(matches!(
            err(400, "BadDeviceToken"),
            Outcome::Permanent {
                gone: Some(SuppressionReason::Unregistered),
                ..
            }
        ));
        assert_eq!(err(403, "ExpiredProviderToken").label(), "account");
        assert_eq!(err(403, "InvalidProviderToken").label(), "account");
        assert_eq!(err(429, "TooManyRequests").label(), "rate_limited");
        assert_eq!(err(400, "DeviceTokenNotForTopic").label(), "permanent");
        assert_eq!(err(503, "ServiceUnavailable").label(), "transient");
        assert_eq!(err(500, "InternalServerError").label(), "transient");
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused_at_start_up() {
        let cfg = ApnsConfig {
            base_url: default_base_url(),
            team_id: "T".into(),
            key_id: "K".into(),
            key_file: None,
            key_pem: Some(Secret::new(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )),
            topic: "com.example".into(),
        };
        assert!(Apns::new("apns", cfg.clone()).is_err());
        assert!(Apns::new(
            "apns",
            ApnsConfig {
                key_pem: None,
                ..cfg
            }
        )
        .is_err());
    }
}
