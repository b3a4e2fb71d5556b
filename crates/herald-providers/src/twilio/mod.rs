//! Twilio Programmable Messaging. Auth: HTTP Basic with the Account SID and
//! auth token. Success is `201 Created` with the message `sid`.
//! Twilio's Messages API has no idempotency key: the delivery key goes in
//! `Idempotency-Key` but Twilio does not deduplicate (docs/providers.md).

pub mod callbacks;
pub mod wire;

use base64::Engine as _;
use herald_core::provider::{
    Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest, VendorResponse,
};
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptParser, VendorReceipt};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// The sender number (E.164); or use `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default)]
    pub status_callback: Option<String>,
}

fn default_base_url() -> String {
    "https://api.twilio.com".into()
}

#[derive(Debug)]
pub struct Twilio {
    name: String,
    url: String,
    auth: String,
    cfg: TwilioConfig,
}

/// Twilio's error codes by what they mean for the message.
/// <https://www.twilio.com/docs/api/errors>
const CODES: crate::Codes<u32> = crate::Codes {
    rate_limited: &[20429, 14107],
    permanent: &[
        21211, // invalid 'To' number
        21408, // region not enabled
        21612, // 'To' not reachable via this sender
        21614, // 'To' is not a mobile number
        21617, // body too long
        30004, // message blocked
        30006, // landline or unreachable carrier
    ],
    account: &[
        20003, // authentication error: wrong SID or token, deleted key
        20005, // account not active (out of funds, trial not activated)
        10001, // account is not active (suspended)
        90010, // account is not active
    ],
    // The recipient texted STOP to this sender: carriers require that it
    // is not sent to again until they text START.
    gone: &[(21610, SuppressionReason::Unsubscribed)],
};

impl Twilio {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: TwilioConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: TwilioConfig) -> Result<Self, String> {
        if cfg.account_sid.is_empty() || cfg.auth_token.is_empty() {
            return Err("account_sid and auth_token are required".into());
        }
        if cfg.from.is_none() && cfg.messaging_service_sid.is_none() {
            return Err("either from or messaging_service_sid is required".into());
        }
        let creds = format!("{}:{}", cfg.account_sid, cfg.auth_token.expose());
        Ok(Self {
            name: name.to_owned(),
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                crate::base_url(&cfg.base_url)?,
                cfg.account_sid
            ),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            ),
            cfg,
        })
    }
}

impl ReceiptParser for Twilio {
    fn receipts(&self, req: &InboundRequest<'_>) -> Result<Vec<VendorReceipt>, ReceiptError> {
        callbacks::receipts(self.cfg.auth_token.expose(), req)
    }
}

impl Provider for Twilio {
    fn name(&self) -> &str {
        &self.name
    }

    fn receipt_parser(&self) -> Option<&dyn ReceiptParser> {
        Some(self)
    }

    fn vendor(&self) -> &'static str {
        "twilio"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Phone(to) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-phone address"));
        };
        let body = msg
            .content
            .text
            .clone()
            .ok_or(BuildError::MissingContent("text"))?;
        let form = wire::CreateMessage {
            to: to.clone(),
            from: self.cfg.from.clone(),
            messaging_service_sid: self.cfg.messaging_service_sid.clone(),
            body,
            // Twilio drops it from its queue once it is stale (1 to 36,000 s).
            validity_period: msg.seconds_left().map(|s| s.clamp(1, 36_000)),
            status_callback: self.cfg.status_callback.as_ref().map(|cb| {
                // The delivery's id rides on the URL Twilio calls back,
                // under Twilio's signature.
                let sep = if cb.contains('?') { '&' } else { '?' };
                format!(
                    "{cb}{sep}{}={}",
                    callbacks::DELIVERY_PARAM,
                    msg.delivery_key
                )
            }),
        };
        let encoded = serde_urlencoded::to_string(&form)
            .map_err(|e| BuildError::Invalid(format!("cannot encode form: {e}")))?;
        crate::post(
            &self.url,
            "application/x-www-form-urlencoded",
            &msg.delivery_key,
            &[("authorization", &self.auth)],
            encoded.into_bytes(),
        )
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = serde_json::from_slice::<wire::Message>(&resp.body)
                .ok()
                .map(|m| m.sid);
            return Outcome::Accepted { vendor_id };
        }
        let err = serde_json::from_slice::<wire::ErrorBody>(&resp.body).ok();
        let code = err.as_ref().and_then(|e| e.code);
        let reason = crate::clip(&match &err {
            Some(e) => format!(
                "twilio {} (code {}): {}",
                resp.status.as_u16(),
                code.unwrap_or(0),
                e.message
            ),
            None => format!("twilio HTTP {}", resp.status.as_u16()),
        });
        crate::classify_code(resp, code, &CODES, reason)
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> Twilio {
        Twilio::new(
            "twilio",
            TwilioConfig {
                base_url: "http://127.0.0.1:9".into(),
                account_sid: "AC123".into(),
                auth_token: Secret::new("tok"),
                from: Some("+15005550006".into()),
                messaging_service_sid: None,
                status_callback: None,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_form_encoded_message_with_basic_auth() {
        let req = adapter()
            .build(&message(
                Channel::Sms,
                Address::Phone("+14155550100".into()),
            ))
            .expect("builds");
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Messages.json"
        );
        assert_eq!(req.headers()["authorization"], "Basic QUMxMjM6dG9r");
        assert_eq!(
            req.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        let form: wire::CreateMessage =
            serde_urlencoded::from_bytes(req.body()).expect("form decodes");
        assert_eq!(form.to, "+14155550100");
        assert_eq!(form.from.as_deref(), Some("+15005550006"));
        assert!(form.body.contains("🔐"), "unicode survives form encoding");
    }

    #[test]
    fn an_expiring_message_gets_a_validity_period() {
        let mut msg = message(Channel::Sms, Address::Phone("+14155550100".into()));
        let form = |m: &OutboundMessage| -> Vec<(String, String)> {
            serde_urlencoded::from_bytes(adapter().build(m).expect("builds").body()).expect("form")
        };
        let validity = |f: &[(String, String)]| {
            f.iter()
                .find(|(k, _)| k == "ValidityPeriod")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(validity(&form(&msg)), None);
        msg.expires_at_ms = Some(msg.now_ms + 120_000);
        assert_eq!(validity(&form(&msg)).as_deref(), Some("120"));
        msg.expires_at_ms = Some(msg.now_ms + 86_400_000);
        assert_eq!(
            validity(&form(&msg)).as_deref(),
            Some("36000"),
            "Twilio's maximum"
        );
    }

    #[test]
    fn classifies_by_twilio_error_code() {
        let a = adapter();
        assert_eq!(
            a.classify(&response(201, &[], r#"{"sid":"SM1","status":"queued"}"#)),
            Outcome::Accepted {
                vendor_id: Some("SM1".into())
            }
        );
        let invalid = r#"{"code":21211,"message":"The 'To' number is not a valid phone number.","status":400}"#;
        assert_eq!(
            a.classify(&response(400, &[], invalid)).label(),
            "permanent"
        );
        let throttled = r#"{"code":20429,"message":"Too Many Requests","status":429}"#;
        assert_eq!(
            a.classify(&response(429, &[("retry-after", "1")], throttled))
                .label(),
            "rate_limited"
        );
        assert_eq!(a.classify(&response(500, &[], "oops")).label(), "transient");
        // A wrong or revoked token: Twilio's answer to it, the account's.
        let denied = r#"{"code":20003,"message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401}"#;
        assert_eq!(
            a.classify(&response(401, &[], denied)),
            Outcome::Account {
                reason: "twilio 401 (code 20003): Authenticate".into()
            }
        );
        let inactive = r#"{"code":20005,"message":"Account not active","status":403}"#;
        assert_eq!(a.classify(&response(403, &[], inactive)).label(), "account");
    }
}
