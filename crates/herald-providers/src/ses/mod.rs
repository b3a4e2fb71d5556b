//! Amazon SES, API v2 `SendEmail` (`POST /v2/email/outbound-emails`, JSON).
//! Auth: AWS Signature Version 4 (service `ses`), as for SNS. Success is
//! `200` with `MessageId`; errors name their type in `x-amzn-ErrorType`
//! (and some bodies' `__type`).
//! <https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html>
//!
//! SES has no idempotency key: the delivery key goes in `Idempotency-Key`
//! and in the `herald_delivery_key` message tag, which SES's event
//! notifications carry back (receipts: `events`).

pub mod events;
pub mod wire;

use herald_core::provider::{
    Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest, VendorResponse,
};
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptParser, VendorReceipt};
use herald_core::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesConfig {
    #[serde(default = "default_region")]
    pub region: String,
    /// Defaults to `https://email.<region>.amazonaws.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Static keys; leave both empty to take credentials from AWS's
    /// standard chain instead (environment, profile files, web identity for
    /// Kubernetes, ECS, EC2 instance metadata), renewed before they expire.
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: Secret,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// With the chain: the profile to use (default: `AWS_PROFILE`, or
    /// `default`), and a credentials file besides `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub shared_credentials_file: Option<std::path::PathBuf>,
    /// A verified identity's address.
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// The configuration set whose event destinations get the receipts.
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// The SNS topics (ARNs) the configuration set publishes its events
    /// to: `POST /v1/receipts/NAME` takes SNS messages from these topics
    /// only (without any, receipts are refused).
    #[serde(default)]
    pub receipt_topic_arns: Vec<String>,
    /// URL prefixes an SNS signing certificate may come from besides
    /// SNS's own `https://sns.<region>.amazonaws.com/` (tests, a mirror).
    #[serde(default)]
    pub receipt_certificate_url_prefixes: Vec<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// SES's error types by what they mean for the message.
/// <https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html#API_SendEmail_Errors>
const CODES: crate::Codes<&str> = crate::Codes {
    rate_limited: &[
        "TooManyRequestsException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
    ],
    permanent: &[
        "MessageRejected",
        "BadRequestException",
        "NotFoundException",
    ],
    account: &[
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AccessDenied",
        "AccessDeniedException",
    ],
    gone: &[],
};

#[derive(Debug)]
pub struct Ses {
    name: String,
    url: String,
    from: String,
    signer: crate::aws::SigV4,
    cfg: SesConfig,
    receipts: events::SnsReceipts,
}

impl Ses {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: SesConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: SesConfig) -> Result<Self, String> {
        let signer = crate::aws::SigV4::new(
            "ses",
            &cfg.region,
            crate::aws::Keys {
                access_key_id: &cfg.access_key_id,
                secret_access_key: &cfg.secret_access_key,
                session_token: cfg.session_token.as_ref(),
                profile: &cfg.profile,
                shared_credentials_file: &cfg.shared_credentials_file,
            },
        )?;
        if herald_core::validate::check_email(&cfg.from_email).is_err() {
            return Err(format!(
                "from_email {:?} is not an email address",
                cfg.from_email
            ));
        }
        let base = match &cfg.base_url {
            Some(u) => crate::base_url(u)?,
            None => format!("https://email.{}.amazonaws.com", cfg.region),
        };
        // RFC 5322 `Name <address>`, the name quoted and escaped.
        let from = match &cfg.from_name {
            Some(n) => format!(
                "\"{}\" <{}>",
                n.replace('\\', "\\\\").replace('"', "\\\""),
                cfg.from_email
            ),
            None => cfg.from_email.clone(),
        };
        Ok(Self {
            name: name.to_owned(),
            url: format!("{base}/v2/email/outbound-emails"),
            from,
            signer,
            receipts: events::SnsReceipts {
                topic_arns: cfg.receipt_topic_arns.clone(),
                extra_url_prefixes: cfg.receipt_certificate_url_prefixes.clone(),
            },
            cfg,
        })
    }
}

impl ReceiptParser for Ses {
    fn receipts(&self, req: &InboundRequest<'_>) -> Result<Vec<VendorReceipt>, ReceiptError> {
        self.receipts.receipts(req)
    }

    fn certificate_url(&self, req: &InboundRequest<'_>) -> Result<Option<String>, ReceiptError> {
        self.receipts.certificate_url(req).map(Some)
    }

    fn subscribe_url(&self, req: &InboundRequest<'_>) -> Result<Option<String>, ReceiptError> {
        self.receipts.subscribe_url(req)
    }
}

impl Provider for Ses {
    fn name(&self) -> &str {
        &self.name
    }

    fn receipt_parser(&self) -> Option<&dyn ReceiptParser> {
        Some(self)
    }

    fn vendor(&self) -> &'static str {
        "ses"
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
        let part = |s: &String| wire::Part {
            data: s.clone(),
            charset: "UTF-8".into(),
        };
        let body = wire::Body {
            text: msg.content.text.as_ref().map(part),
            html: msg.content.html.as_ref().map(part),
        };
        if body.text.is_none() && body.html.is_none() {
            return Err(BuildError::MissingContent("text or html"));
        }
        let send = wire::SendEmail {
            from_email_address: self.from.clone(),
            destination: wire::Destination {
                to_addresses: vec![to.clone()],
            },
            content: wire::EmailContent {
                simple: wire::Simple {
                    subject: part(&subject),
                    body,
                    headers: crate::unsubscribe_headers(msg)
                        .into_iter()
                        .map(|(name, value)| wire::Header { name, value })
                        .collect(),
                },
            },
            email_tags: vec![wire::Tag {
                name: "herald_delivery_key".into(),
                value: msg.delivery_key.clone(),
            }],
            configuration_set_name: self.cfg.configuration_set.clone(),
        };
        let mut req = crate::post(
            &self.url,
            "application/json",
            &msg.delivery_key,
            &[],
            crate::json(&send)?,
        )?;
        // Signed as of this attempt, right before it goes out.
        self.signer.sign(&mut req, msg.now_ms)?;
        Ok(req)
    }

    fn aws_chain(&self) -> Option<&herald_core::provider::AwsChain> {
        self.signer.chain()
    }

    fn authorize(
        &self,
        req: &mut VendorRequest,
        token: &herald_core::provider::AccessToken,
    ) -> Result<(), BuildError> {
        self.signer.sign_with(req, token)
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = serde_json::from_slice::<wire::Sent>(&resp.body)
                .ok()
                .map(|s| s.message_id);
            return Outcome::Accepted { vendor_id };
        }
        let body = serde_json::from_slice::<wire::ErrorBody>(&resp.body).ok();
        // `x-amzn-ErrorType: MessageRejected:http://internal.amazon.com/...`
        let kind = resp
            .headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned())
            .or_else(|| {
                body.as_ref()
                    .and_then(|b| b.kind.clone())
                    .map(|k| k.rsplit('#').next().unwrap_or(&k).to_owned())
            });
        let reason = crate::clip(&format!(
            "ses {} {}: {}",
            resp.status.as_u16(),
            kind.as_deref().unwrap_or("-"),
            body.and_then(|b| b.message).unwrap_or_default()
        ));
        crate::classify_code(resp, kind.as_deref(), &CODES, reason)
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> Ses {
        Ses::new(
            "ses",
            SesConfig {
                region: "eu-west-1".into(),
                base_url: None,
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                session_token: None,
                profile: None,
                shared_credentials_file: None,
                from_email: "orders@shop.example".into(),
                from_name: Some("Zoë \"The\" Shop".into()),
                configuration_set: Some("herald-events".into()),
                receipt_topic_arns: vec![],
                receipt_certificate_url_prefixes: vec![],
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_signed_send_email_with_the_delivery_tag() {
        let mut m = message(Channel::Email, Address::Email("ann@example.org".into()));
        m.unsubscribe = Some("https://h.example/v1/unsubscribe/k.p.s".into());
        let req = adapter().build(&m).expect("builds");
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(
            body["Content"]["Simple"]["Headers"],
            serde_json::json!([
                {"Name": "List-Unsubscribe", "Value": "<https://h.example/v1/unsubscribe/k.p.s>"},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
            ])
        );
        assert_eq!(
            req.uri(),
            "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
        );
        let auth = req.headers()["authorization"].to_str().expect("ascii");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/ses/aws4_request"
            ),
            "{auth}"
        );
        assert_eq!(req.headers()["x-amz-date"], "20231114T221320Z");
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(
            body["FromEmailAddress"],
            "\"Zoë \\\"The\\\" Shop\" <orders@shop.example>"
        );
        assert_eq!(body["Destination"]["ToAddresses"][0], "ann@example.org");
        assert_eq!(body["Content"]["Simple"]["Subject"]["Data"], "Your code");
        assert_eq!(
            body["Content"]["Simple"]["Body"]["Html"]["Charset"],
            "UTF-8"
        );
        assert_eq!(body["EmailTags"][0]["Name"], "herald_delivery_key");
        assert_eq!(body["EmailTags"][0]["Value"], m.delivery_key.as_str());
        assert_eq!(body["ConfigurationSetName"], "herald-events");
    }

    #[test]
    fn errors_classify_by_their_type() {
        let ses = adapter();
        let err = |status: u16, kind: &str| {
            ses.classify(&response(
                status,
                &[(
                    "x-amzn-errortype",
                    &format!("{kind}:http://internal.amazon.com/coral/com.amazon.sesv2/"),
                )],
                r#"{"message":"words"}"#,
            ))
        };
        assert_eq!(
            ses.classify(&response(200, &[], r#"{"MessageId":"0100-abc"}"#)),
            Outcome::Accepted {
                vendor_id: Some("0100-abc".into())
            }
        );
        assert_eq!(err(400, "MessageRejected").label(), "permanent");
        assert_eq!(err(429, "TooManyRequestsException").label(), "rate_limited");
        assert_eq!(err(400, "SendingPausedException").label(), "account");
        assert_eq!(err(403, "UnrecognizedClientException").label(), "account");
        assert_eq!(
            err(400, "MailFromDomainNotVerifiedException").label(),
            "account"
        );
        assert_eq!(err(500, "InternalFailure").label(), "transient");
        // The type in the body when the header is missing.
        let body_only = ses.classify(&response(
            400,
            &[],
            r#"{"__type":"com.amazon.sesv2#AccountSuspendedException","message":"suspended"}"#,
        ));
        assert_eq!(body_only.label(), "account");
    }
}
