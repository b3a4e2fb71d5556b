//! SendGrid, v3 Mail Send. Auth: `Authorization: Bearer <API key>`.
//! Success is `202 Accepted` with the message id in `X-Message-Id`.
//! SendGrid has no idempotency key of its own: the delivery key is sent as
//! `Idempotency-Key` and in `custom_args.herald_delivery_key`, but SendGrid
//! does not deduplicate on it (see docs/providers.md).

pub mod events;
pub mod wire;

use herald_core::provider::{
    classify_status, Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest,
    VendorResponse,
};
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptParser, VendorReceipt};
use herald_core::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub api_key: Secret,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// The signed Event Webhook's verification key (base64 DER, as SendGrid
    /// shows it): with it, `POST /v1/receipts/NAME` takes the webhook's
    /// events (delivered, bounces, spam reports); without it, receipts are
    /// refused, since nothing could tell them from forgeries.
    #[serde(default)]
    pub event_webhook_public_key: Option<String>,
}

fn default_base_url() -> String {
    "https://api.sendgrid.com".into()
}

#[derive(Debug)]
pub struct SendGrid {
    name: String,
    url: String,
    auth: String,
    cfg: SendGridConfig,
    events_key: Option<p256::ecdsa::VerifyingKey>,
}

impl SendGrid {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: SendGridConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: SendGridConfig) -> Result<Self, String> {
        if cfg.api_key.is_empty() {
            return Err("api_key is required".into());
        }
        if herald_core::validate::check_email(&cfg.from_email).is_err() {
            return Err(format!(
                "from_email {:?} is not an email address",
                cfg.from_email
            ));
        }
        let events_key = match cfg.event_webhook_public_key.as_deref() {
            Some(k) if !k.trim().is_empty() => Some(events::verifying_key(k)?),
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            url: format!("{}/v3/mail/send", crate::base_url(&cfg.base_url)?),
            auth: format!("Bearer {}", cfg.api_key.expose()),
            cfg,
            events_key,
        })
    }
}

impl ReceiptParser for SendGrid {
    fn receipts(&self, req: &InboundRequest<'_>) -> Result<Vec<VendorReceipt>, ReceiptError> {
        match &self.events_key {
            Some(key) => events::receipts(key, req),
            None => Err(ReceiptError::Unverified(
                "no event_webhook_public_key is configured for this account".into(),
            )),
        }
    }
}

impl Provider for SendGrid {
    fn name(&self) -> &str {
        &self.name
    }

    fn receipt_parser(&self) -> Option<&dyn ReceiptParser> {
        Some(self)
    }

    fn vendor(&self) -> &'static str {
        "sendgrid"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Email(to) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-email address"));
        };
        let subject = msg
            .content
            .subject
            .clone()
            .ok_or(BuildError::MissingContent("subject"))?;
        let mut content = Vec::with_capacity(2);
        if let Some(text) = &msg.content.text {
            content.push(wire::ContentPart {
                kind: "text/plain".into(),
                value: text.clone(),
            });
        }
        if let Some(html) = &msg.content.html {
            content.push(wire::ContentPart {
                kind: "text/html".into(),
                value: html.clone(),
            });
        }
        if content.is_empty() {
            return Err(BuildError::MissingContent("text or html"));
        }
        let body = wire::MailSend {
            personalizations: vec![wire::Personalization {
                to: vec![wire::EmailAddress {
                    email: to.clone(),
                    name: None,
                }],
            }],
            from: wire::EmailAddress {
                email: self.cfg.from_email.clone(),
                name: self.cfg.from_name.clone(),
            },
            subject,
            content,
            categories: msg.category.iter().cloned().collect(),
            custom_args: [
                ("herald_delivery_key".to_owned(), msg.delivery_key.clone()),
                (
                    "herald_notification_id".to_owned(),
                    msg.notification_id.clone(),
                ),
            ]
            .into_iter()
            .collect(),
            headers: crate::unsubscribe_headers(msg).into_iter().collect(),
        };
        crate::post(
            &self.url,
            "application/json",
            &msg.delivery_key,
            &[("authorization", &self.auth)],
            crate::json(&body)?,
        )
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = resp
                .headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Outcome::Accepted { vendor_id };
        }
        let reason = match serde_json::from_slice::<wire::ErrorBody>(&resp.body) {
            Ok(b) if !b.errors.is_empty() => b
                .errors
                .iter()
                .map(|e| match &e.field {
                    Some(f) => format!("{f}: {}", e.message),
                    None => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => format!("HTTP {}", resp.status.as_u16()),
        };
        classify_status(
            resp,
            crate::clip(&format!("sendgrid {}: {reason}", resp.status.as_u16())),
        )
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> SendGrid {
        SendGrid::new(
            "sendgrid",
            SendGridConfig {
                base_url: "http://127.0.0.1:9/".into(),
                api_key: Secret::new("SG.key"),
                from_email: "noreply@example.com".into(),
                from_name: Some("Example".into()),
                event_webhook_public_key: None,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_v3_mail_send() {
        let req = adapter()
            .build(&message(
                Channel::Email,
                Address::Email("ada@example.com".into()),
            ))
            .expect("builds");
        assert_eq!(req.uri(), "http://127.0.0.1:9/v3/mail/send");
        assert_eq!(req.headers()["authorization"], "Bearer SG.key");
        assert_eq!(
            req.headers()["idempotency-key"],
            "0190a5e2-7c3b-7000-8000-000000000001"
        );
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(
            body["personalizations"][0]["to"][0]["email"],
            "ada@example.com"
        );
        assert_eq!(body["from"]["email"], "noreply@example.com");
        assert_eq!(body["subject"], "Your code");
        assert_eq!(body["content"][0]["type"], "text/plain");
        assert_eq!(body["content"][1]["type"], "text/html");
        assert_eq!(body["categories"][0], "auth");
        assert_eq!(
            body["custom_args"]["herald_delivery_key"],
            "0190a5e2-7c3b-7000-8000-000000000001"
        );
    }

    #[test]
    fn a_one_click_unsubscribe_goes_in_the_headers() {
        let mut m = message(Channel::Email, Address::Email("ann@example.org".into()));
        let plain = adapter().build(&m).expect("builds");
        let body: serde_json::Value = serde_json::from_slice(plain.body()).expect("json");
        assert!(body.get("headers").is_none(), "none without a link");
        m.unsubscribe = Some("https://h.example/v1/unsubscribe/k.p.s".into());
        let req = adapter().build(&m).expect("builds");
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(
            body["headers"],
            serde_json::json!({
                "List-Unsubscribe": "<https://h.example/v1/unsubscribe/k.p.s>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
            })
        );
    }

    #[test]
    fn refuses_the_wrong_address() {
        let e = adapter().build(&message(
            Channel::Sms,
            Address::Phone("+14155550100".into()),
        ));
        assert!(matches!(e, Err(BuildError::WrongAddress(_))));
    }

    #[test]
    fn classifies_responses() {
        let a = adapter();
        assert_eq!(
            a.classify(&response(202, &[("x-message-id", "abc")], "")),
            Outcome::Accepted {
                vendor_id: Some("abc".into())
            }
        );
        let bad = a.classify(&response(
            400,
            &[],
            r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email"}]}"#,
        ));
        assert_eq!(bad.label(), "permanent");
        assert!(bad
            .reason()
            .is_some_and(|r| r.contains("personalizations.0.to.0.email")));
        assert_eq!(
            a.classify(&response(429, &[("retry-after", "3")], ""))
                .label(),
            "rate_limited"
        );
        assert_eq!(
            a.classify(&response(503, &[], "<html>")).label(),
            "transient"
        );
        // A revoked key, or one without the Mail Send permission.
        let revoked = r#"{"errors":[{"field":null,"message":"The provided authorization grant is invalid, expired, or revoked"}]}"#;
        assert_eq!(a.classify(&response(401, &[], revoked)).label(), "account");
        let denied = r#"{"errors":[{"field":null,"message":"access forbidden"}]}"#;
        assert_eq!(a.classify(&response(403, &[], denied)).label(), "account");
    }
}
