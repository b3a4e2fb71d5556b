//! Firebase Cloud Messaging, HTTP v1. Auth: `Authorization: Bearer <OAuth 2
//! access token>` (configured directly for now; minting it from a service
//! account comes with the full vendor set). FCM has no idempotency key: the
//! delivery key is sent as `Idempotency-Key` and in `data.herald_delivery_key`
//! so the app can drop a repeat (docs/providers.md).

pub mod wire;

use std::collections::BTreeMap;

use herald_core::model::{Priority, PushPlatform};
use herald_core::provider::{
    classify_status, Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest,
    VendorResponse,
};
use herald_core::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub project_id: String,
    pub access_token: Secret,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

#[derive(Debug)]
pub struct Fcm {
    name: String,
    url: String,
    auth: String,
}

impl Fcm {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: FcmConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: FcmConfig) -> Result<Self, String> {
        if cfg.project_id.is_empty() || cfg.access_token.is_empty() {
            return Err("project_id and access_token are required".into());
        }
        Ok(Self {
            name: name.to_owned(),
            url: format!(
                "{}/v1/projects/{}/messages:send",
                crate::base_url(&cfg.base_url)?,
                cfg.project_id
            ),
            auth: format!("Bearer {}", cfg.access_token.expose()),
        })
    }
}

impl Provider for Fcm {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "fcm"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Push { platform, token } = &msg.address else {
            return Err(BuildError::WrongAddress("a non-push address"));
        };
        if msg.content.text.is_none() && msg.content.subject.is_none() {
            return Err(BuildError::MissingContent("text or subject"));
        }
        let urgent = matches!(msg.priority, Priority::Critical | Priority::High);
        let mut data = BTreeMap::new();
        data.insert("herald_delivery_key".to_owned(), msg.delivery_key.clone());
        data.insert(
            "herald_notification_id".to_owned(),
            msg.notification_id.clone(),
        );
        if let Some(meta) = &msg.metadata {
            for (k, v) in meta {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                data.entry(k.clone()).or_insert(v);
            }
        }
        let message = wire::Message {
            token: token.clone(),
            notification: Some(wire::Notification {
                title: msg.content.subject.clone(),
                body: msg.content.text.clone(),
            }),
            data,
            // Both platforms are told when the message goes stale, so a
            // phone that was offline does not show an expired code.
            android: (*platform == PushPlatform::Android).then(|| wire::AndroidConfig {
                priority: if urgent { "HIGH" } else { "NORMAL" }.into(),
                ttl: msg.seconds_left().map(|s| format!("{s}s")),
            }),
            apns: (*platform == PushPlatform::Ios).then(|| {
                let mut headers = BTreeMap::from([(
                    "apns-priority".to_owned(),
                    if urgent { "10" } else { "5" }.to_owned(),
                )]);
                if let Some(exp) = msg.expires_at_ms {
                    headers.insert("apns-expiration".to_owned(), (exp / 1000).to_string());
                }
                wire::ApnsConfig { headers }
            }),
        };
        crate::post(
            &self.url,
            "application/json",
            &msg.delivery_key,
            &[("authorization", &self.auth)],
            crate::json(&wire::SendRequest { message })?,
        )
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = serde_json::from_slice::<wire::SendResponse>(&resp.body)
                .ok()
                .map(|r| r.name);
            return Outcome::Accepted { vendor_id };
        }
        let env = serde_json::from_slice::<wire::ErrorEnvelope>(&resp.body).ok();
        let code = env
            .as_ref()
            .and_then(|e| e.error.details.iter().find_map(|d| d.error_code.clone()));
        let reason = crate::clip(&match &env {
            Some(e) => format!(
                "fcm {} {}: {}",
                resp.status.as_u16(),
                code.as_deref().unwrap_or(&e.error.status),
                e.error.message
            ),
            None => format!("fcm HTTP {}", resp.status.as_u16()),
        });
        match code.as_deref() {
            Some("UNREGISTERED" | "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH") => {
                Outcome::Permanent { reason }
            }
            // The project's own credentials (the service account's token,
            // or the APNs certificate or web push key it holds), not the
            // message's: 401/403 `UNAUTHENTICATED`/`PERMISSION_DENIED` are
            // the account's by their status too.
            Some("THIRD_PARTY_AUTH_ERROR" | "UNAUTHENTICATED" | "PERMISSION_DENIED") => {
                Outcome::Account { reason }
            }
            Some("QUOTA_EXCEEDED") => Outcome::RateLimited {
                retry_after: herald_core::provider::retry_after(&resp.headers),
                reason,
            },
            Some("UNAVAILABLE" | "INTERNAL") => Outcome::Transient {
                reason,
                ambiguous: false,
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

    fn adapter() -> Fcm {
        Fcm::new(
            "fcm",
            FcmConfig {
                base_url: "http://127.0.0.1:9".into(),
                project_id: "demo-app".into(),
                access_token: Secret::new("ya29.token"),
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_v1_send() {
        let addr = Address::Push {
            platform: PushPlatform::Android,
            token: "dev-token".into(),
        };
        let req = adapter()
            .build(&message(Channel::Push, addr))
            .expect("builds");
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:9/v1/projects/demo-app/messages:send"
        );
        assert_eq!(req.headers()["authorization"], "Bearer ya29.token");
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(body["message"]["token"], "dev-token");
        assert_eq!(body["message"]["notification"]["title"], "Your code");
        assert_eq!(body["message"]["android"]["priority"], "HIGH");
        assert_eq!(
            body["message"]["data"]["order"], "42",
            "data values are strings"
        );
        assert_eq!(
            body["message"]["data"]["herald_delivery_key"],
            "0190a5e2-7c3b-7000-8000-000000000001"
        );
        assert!(body["message"].get("apns").is_none());
        assert!(
            body["message"]["android"].get("ttl").is_none(),
            "no expiry, no ttl"
        );
    }

    #[test]
    fn an_expiring_message_carries_its_ttl_to_both_platforms() {
        let mut msg = message(
            Channel::Push,
            Address::Push {
                platform: PushPlatform::Android,
                token: "dev-token".into(),
            },
        );
        msg.expires_at_ms = Some(msg.now_ms + 299_001);
        let body: serde_json::Value =
            serde_json::from_slice(adapter().build(&msg).expect("builds").body()).expect("json");
        assert_eq!(body["message"]["android"]["ttl"], "300s", "rounded up");
        msg.address = Address::Push {
            platform: PushPlatform::Ios,
            token: "dev-token".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(adapter().build(&msg).expect("builds").body()).expect("json");
        let headers = &body["message"]["apns"]["headers"];
        assert_eq!(headers["apns-expiration"], "1700000299");
        assert_eq!(headers["apns-priority"], "10");
    }

    #[test]
    fn classifies_by_fcm_error_code() {
        let a = adapter();
        let ok = a.classify(&response(
            200,
            &[],
            r#"{"name":"projects/demo-app/messages/0:1"}"#,
        ));
        assert_eq!(
            ok,
            Outcome::Accepted {
                vendor_id: Some("projects/demo-app/messages/0:1".into())
            }
        );
        let gone = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(a.classify(&response(404, &[], gone)).label(), "permanent");
        let quota = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}"#;
        assert_eq!(
            a.classify(&response(429, &[("retry-after", "10")], quota))
                .label(),
            "rate_limited"
        );
        let down = r#"{"error":{"code":503,"message":"unavailable","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNAVAILABLE"}]}}"#;
        assert_eq!(a.classify(&response(503, &[], down)).label(), "transient");
        // An expired or revoked access token: the account's.
        let expired = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#;
        assert_eq!(a.classify(&response(401, &[], expired)).label(), "account");
        let apns = r#"{"error":{"code":401,"message":"Auth error from APNS or Web Push Service","status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"THIRD_PARTY_AUTH_ERROR"}]}}"#;
        assert_eq!(a.classify(&response(401, &[], apns)).label(), "account");
        let denied = r#"{"error":{"code":403,"message":"Permission 'cloudmessaging.messages.create' denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(a.classify(&response(403, &[], denied)).label(), "account");
        // A token another sender registered is that token's problem.
        let mismatch = r#"{"error":{"code":403,"message":"SenderId mismatch","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"SENDER_ID_MISMATCH"}]}}"#;
        assert_eq!(
            a.classify(&response(403, &[], mismatch)).label(),
            "permanent"
        );
    }
}
