//! Amazon SNS, publishing SMS straight to a phone number (Query API
//! `Action=Publish`, version 2010-03-31). Auth: AWS Signature Version 4,
//! signed with the `aws-sigv4` crate (AWS's own signer). Success is `200`
//! with `<PublishResponse><PublishResult><MessageId>`; errors are
//! `<ErrorResponse><Error><Code>`.
//!
//! SNS has no idempotency key for SMS (`MessageDeduplicationId` exists only
//! for FIFO topics): the delivery key goes in `Idempotency-Key`, which SNS
//! ignores (docs/providers.md).

pub mod wire;

use herald_core::model::Priority;
use herald_core::provider::{
    Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest, VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    #[serde(default = "default_region")]
    pub region: String,
    /// Defaults to `https://sns.<region>.amazonaws.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Static keys; leave both empty to take credentials from AWS's
    /// standard chain instead (environment, profile files, web identity for
    /// Kubernetes, ECS, EC2 instance metadata), renewed before they expire.
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: Secret,
    /// For temporary credentials (STS).
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// With the chain: the profile to use (default: `AWS_PROFILE`, or
    /// `default`), and a credentials file besides `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub shared_credentials_file: Option<std::path::PathBuf>,
    /// `AWS.SNS.SMS.SenderID`, where the destination country supports it.
    #[serde(default)]
    pub sender_id: Option<String>,
    /// `AWS.MM.SMS.OriginationNumber`: the number to send from (E.164).
    #[serde(default)]
    pub origination_number: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Debug)]
pub struct Sns {
    name: String,
    url: String,
    signer: crate::aws::SigV4,
    cfg: SnsConfig,
}

/// SNS's error codes by what they mean for the message. "Slow down" is
/// 429 `Throttled`, and the Query API's common `Throttling` error, which
/// comes with a 400.
/// <https://docs.aws.amazon.com/sns/latest/api/API_Publish.html#API_Publish_Errors>,
/// <https://docs.aws.amazon.com/sns/latest/api/CommonErrors.html>
const CODES: crate::Codes<&str> = crate::Codes {
    rate_limited: &[
        "Throttled",
        "Throttling",
        "ThrottlingException",
        "KMSThrottling",
    ],
    permanent: &[
        "InvalidParameter",
        "ParameterValueInvalid",
        "ValidationException",
        "EndpointDisabled",
        "NotFound",
    ],
    account: &[
        "InvalidClientTokenId",
        "ExpiredToken",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AuthorizationError",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
    ],
    // The phone number opted out of SMS from this account (a STOP reply).
    gone: &[("OptedOut", SuppressionReason::Unsubscribed)],
};

impl Sns {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: SnsConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: SnsConfig) -> Result<Self, String> {
        let signer = crate::aws::SigV4::new(
            "sns",
            &cfg.region,
            crate::aws::Keys {
                access_key_id: &cfg.access_key_id,
                secret_access_key: &cfg.secret_access_key,
                session_token: cfg.session_token.as_ref(),
                profile: &cfg.profile,
                shared_credentials_file: &cfg.shared_credentials_file,
            },
        )?;
        let base = match &cfg.base_url {
            Some(u) => crate::base_url(u)?,
            None => format!("https://sns.{}.amazonaws.com", cfg.region),
        };
        Ok(Self {
            name: name.to_owned(),
            url: format!("{base}/"),
            signer,
            cfg,
        })
    }

    /// The Publish form: `PhoneNumber`, `Message` and the SMS attributes.
    fn form(&self, to: &str, text: &str, priority: Priority) -> Result<String, BuildError> {
        // Transactional SMS get the more reliable route; the rest are
        // promotional (cheaper, and where the law says so, quiet hours apply).
        let sms_type = match priority {
            Priority::Critical | Priority::High => "Transactional",
            Priority::Normal | Priority::Low => "Promotional",
        };
        let mut attributes = vec![("AWS.SNS.SMS.SMSType", sms_type)];
        if let Some(s) = &self.cfg.sender_id {
            attributes.push(("AWS.SNS.SMS.SenderID", s));
        }
        if let Some(n) = &self.cfg.origination_number {
            attributes.push(("AWS.MM.SMS.OriginationNumber", n));
        }
        let mut fields: Vec<(String, &str)> = vec![
            ("Action".into(), "Publish"),
            ("Version".into(), "2010-03-31"),
            ("PhoneNumber".into(), to),
            ("Message".into(), text),
        ];
        for (i, (name, value)) in attributes.into_iter().enumerate() {
            let entry = format!("MessageAttributes.entry.{}", i + 1);
            fields.push((format!("{entry}.Name"), name));
            fields.push((format!("{entry}.Value.DataType"), "String"));
            fields.push((format!("{entry}.Value.StringValue"), value));
        }
        serde_urlencoded::to_string(&fields)
            .map_err(|e| BuildError::Invalid(format!("cannot encode form: {e}")))
    }
}

impl Provider for Sns {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "sns"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Phone(to) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-phone address"));
        };
        let text = msg
            .content
            .text
            .as_deref()
            .ok_or(BuildError::MissingContent("text"))?;
        let form = self.form(to, text, msg.priority)?;
        let mut req = crate::post(
            &self.url,
            "application/x-www-form-urlencoded; charset=utf-8",
            &msg.delivery_key,
            &[],
            form.into_bytes(),
        )?;
        // As the AWS SDKs send it: no `Accept`. Asked for JSON, the Query
        // API may answer in JSON, and its XML is what it documents.
        req.headers_mut().remove(http::header::ACCEPT);
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
        let text = std::str::from_utf8(&resp.body).unwrap_or_default();
        if resp.status.is_success() {
            let vendor_id = quick_xml::de::from_str::<wire::PublishResponse>(text)
                .ok()
                .map(|r| r.result.message_id);
            return Outcome::Accepted { vendor_id };
        }
        // The documented XML; or, should an endpoint answer in JSON, the
        // Query API's JSON of the same shape (`{"Error": {"Code": …}}`).
        let err = quick_xml::de::from_str::<wire::ErrorResponse>(text)
            .ok()
            .or_else(|| serde_json::from_str::<wire::ErrorResponse>(text).ok())
            .map(|r| r.error);
        let code = err.as_ref().map(|e| e.code.as_str());
        let reason = crate::clip(&match &err {
            Some(e) => format!(
                "sns {} {}{}: {}",
                resp.status.as_u16(),
                e.code,
                e.kind
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default(),
                e.message.as_deref().unwrap_or("")
            ),
            None => format!("sns HTTP {}", resp.status.as_u16()),
        });
        crate::classify_code(resp, code, &CODES, reason)
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> Sns {
        Sns::new(
            "sns",
            SnsConfig {
                region: "us-east-1".into(),
                base_url: None,
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                session_token: None,
                profile: None,
                shared_credentials_file: None,
                sender_id: Some("Herald".into()),
                origination_number: None,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn publish_is_a_signed_form() {
        let msg = message(Channel::Sms, Address::Phone("+14155550100".into()));
        let req = adapter().build(&msg).expect("builds");
        assert_eq!(req.uri(), "https://sns.us-east-1.amazonaws.com/");
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(req.body()).expect("a form");
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Action"), Some("Publish"));
        assert_eq!(get("Version"), Some("2010-03-31"));
        assert_eq!(get("PhoneNumber"), Some("+14155550100"));
        assert_eq!(
            get("Message"),
            msg.content.text.as_deref(),
            "unicode intact"
        );
        assert_eq!(
            get("MessageAttributes.entry.1.Name"),
            Some("AWS.SNS.SMS.SMSType")
        );
        assert_eq!(
            get("MessageAttributes.entry.1.Value.StringValue"),
            Some("Transactional"),
            "a critical message"
        );
        assert_eq!(
            get("MessageAttributes.entry.2.Value.StringValue"),
            Some("Herald")
        );

        let h = req.headers();
        // 2023-11-14T22:13:20.5Z, from the fixture's now_ms.
        assert_eq!(h["x-amz-date"], "20231114T221320Z");
        let auth = h["authorization"].to_str().expect("ascii");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/sns/aws4_request, SignedHeaders="
            ),
            "{auth}"
        );
        assert!(
            auth.contains("idempotency-key"),
            "the key is signed: {auth}"
        );
        let signature = auth.rsplit("Signature=").next().expect("signature");
        assert_eq!(signature.len(), 64);
        assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h["idempotency-key"], msg.delivery_key.as_str());
        assert!(
            h.get("accept").is_none(),
            "no Accept, as botocore sends it: the Query API answers XML"
        );
        assert_eq!(
            h["content-type"],
            "application/x-www-form-urlencoded; charset=utf-8"
        );

        // Deterministic for the same input and time; different for another body.
        let again = adapter().build(&msg).expect("builds");
        assert_eq!(again.headers()["authorization"], h["authorization"]);
        let mut other = msg.clone();
        other.content.text = Some("another".into());
        let other = adapter().build(&other).expect("builds");
        assert_ne!(other.headers()["authorization"], h["authorization"]);
    }

    #[test]
    fn needs_a_phone_and_text() {
        let msg = message(Channel::Email, Address::Email("a@example.com".into()));
        assert!(matches!(
            adapter().build(&msg),
            Err(BuildError::WrongAddress(_))
        ));
        let mut msg = message(Channel::Sms, Address::Phone("+14155550100".into()));
        msg.content.text = None;
        assert!(matches!(
            adapter().build(&msg),
            Err(BuildError::MissingContent(_))
        ));
    }

    #[test]
    fn responses_classify_by_code() {
        let ok = response(
            200,
            &[],
            r#"<PublishResponse xmlns="https://sns.amazonaws.com/doc/2010-03-31/"><PublishResult><MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId></PublishResult><ResponseMetadata><RequestId>d74b8436-ae13-5ab4-a9ff-ce54dfea72a0</RequestId></ResponseMetadata></PublishResponse>"#,
        );
        assert_eq!(
            adapter().classify(&ok),
            Outcome::Accepted {
                vendor_id: Some("567910cd-659e-55d4-8ccb-5aaf14679dc0".into())
            }
        );
        let err = |status: u16, code: &str| {
            response(
                status,
                &[],
                &format!(
                    r#"<ErrorResponse xmlns="https://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type><Code>{code}</Code><Message>Invalid parameter: PhoneNumber Reason: +1 is not valid to publish to</Message></Error><RequestId>x</RequestId></ErrorResponse>"#
                ),
            )
        };
        let a = adapter();
        assert_eq!(
            a.classify(&err(400, "InvalidParameter")).label(),
            "permanent"
        );
        // The account's credential, not the message: it waits.
        for code in [
            "InvalidClientTokenId",
            "ExpiredToken",
            "SignatureDoesNotMatch",
            "AuthorizationError",
        ] {
            assert_eq!(a.classify(&err(403, code)).label(), "account", "{code}");
        }
        assert_eq!(a.classify(&err(429, "Throttled")).label(), "rate_limited");
        assert_eq!(
            a.classify(&err(400, "Throttling")).label(),
            "rate_limited",
            "the common throttling error comes with a 400"
        );
        assert_eq!(a.classify(&err(500, "InternalError")).label(), "transient");
        assert_eq!(
            a.classify(&response(503, &[], "<html>unavailable</html>"))
                .label(),
            "transient"
        );
        let json = response(
            400,
            &[],
            r#"{"Error":{"Code":"Throttling","Message":"Rate exceeded","Type":"Sender"},"RequestId":"x"}"#,
        );
        assert_eq!(
            a.classify(&json).label(),
            "rate_limited",
            "a JSON answer is read too"
        );
        let reason = a.classify(&err(400, "InvalidParameter"));
        assert!(
            reason
                .reason()
                .is_some_and(|r| r.contains("InvalidParameter (Sender)")),
            "{reason:?}"
        );
    }
}
