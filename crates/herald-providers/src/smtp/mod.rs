//! Email over SMTP: a mail server or relay of the team's own (Postfix, a
//! provider's submission port, Amazon SES's SMTP interface, a local relay).
//!
//! The adapter stays pure like the others: `build` writes the whole MIME
//! message with `lettre`'s builder (text and HTML as alternatives,
//! `Message-ID` from the delivery key, `Date`, UTF-8 subjects and names
//! encoded) into a request whose body is the message and whose headers
//! carry the envelope; the engine's SMTP transport (`herald::engine::smtp`)
//! speaks SMTP to the server, with STARTTLS, implicit TLS or none, AUTH
//! and a pool of connections per account, and answers with the server's
//! reply as a response (`SMTP_CODE`, the reply text as the body), which
//! `classify` reads.
//!
//! SMTP has no idempotency key: a message whose DATA was sent but whose
//! reply never came may have been taken (an ambiguous outcome, kept on this
//! account). The `Message-ID` is the same on every attempt, so receivers
//! and mailbox providers can drop the repeat.

use std::path::PathBuf;

use bytes::Bytes;
use herald_core::provider::{
    Address, BuildError, OutboundMessage, Outcome, Provider, VendorRequest, VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use lettre::message::{header, Mailbox, MultiPart, SinglePart};
use serde::Deserialize;

/// The envelope sender (`MAIL FROM`), on the request `build` makes.
pub const ENVELOPE_FROM: &str = "x-smtp-envelope-from";
/// The envelope recipient (`RCPT TO`).
pub const ENVELOPE_TO: &str = "x-smtp-envelope-to";
/// On the transport's answer: the server's reply code (`250`, `451`, ...).
pub const SMTP_CODE: &str = "x-smtp-code";
/// On the transport's answer: the message's `Message-ID`, kept as the
/// vendor's id for it.
pub const MESSAGE_ID: &str = "x-smtp-message-id";

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain, then STARTTLS before anything else (refused if the server
    /// does not offer it): the submission port, 587.
    #[default]
    Starttls,
    /// TLS from the first byte: port 465.
    Implicit,
    /// No TLS at all: only for a relay on the same host or network (25).
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 587 with STARTTLS, 465 with implicit TLS, 25 without.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    /// AUTH (PLAIN or LOGIN, as the server offers); both or neither.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    /// A PEM file of certificates to trust besides the system's (a relay
    /// with a private CA, or a test's own).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections kept open to the server (a pool per account).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// The domain of each `Message-ID` (`<delivery key>@domain`); default:
    /// the sender's.
    #[serde(default)]
    pub message_id_domain: Option<String>,
}

fn default_pool_size() -> u32 {
    4
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        })
    }
}

#[derive(Debug)]
pub struct Smtp {
    name: String,
    from: Mailbox,
    message_id_domain: String,
    uri: String,
}

impl Smtp {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: SmtpConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, &cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: &SmtpConfig) -> Result<Self, String> {
        if cfg.host.trim().is_empty() {
            return Err("host is required".into());
        }
        if cfg.username.is_some() != cfg.password.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err("username and password go together".into());
        }
        if cfg.pool_size == 0 {
            return Err("pool_size must be at least 1".into());
        }
        let address = cfg.from_email.parse().map_err(|e| {
            format!(
                "from_email {:?} is not an email address: {e}",
                cfg.from_email
            )
        })?;
        let domain = match &cfg.message_id_domain {
            Some(d) => d.clone(),
            None => cfg
                .from_email
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
        };
        Ok(Self {
            name: name.to_owned(),
            from: Mailbox::new(cfg.from_name.clone(), address),
            message_id_domain: domain,
            uri: format!("smtp://{}:{}", cfg.host, cfg.port()),
        })
    }

    /// The whole message, as it goes after DATA.
    fn message(&self, msg: &OutboundMessage, to: &str) -> Result<lettre::Message, BuildError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| BuildError::Invalid(format!("the recipient is not an address: {e}")))?;
        let subject = msg
            .content
            .subject
            .clone()
            .ok_or(BuildError::MissingContent("subject"))?;
        let sent_at = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(msg.now_ms).unwrap_or(0));
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .date(sent_at)
            .message_id(Some(format!(
                "<{}@{}>",
                msg.delivery_key, self.message_id_domain
            )))
            .header(DeliveryKey(msg.delivery_key.clone()));
        let mut builder = builder;
        if let Some(url) = &msg.unsubscribe {
            builder = builder
                .header(ListUnsubscribe(format!("<{url}>")))
                .header(ListUnsubscribePost);
        }
        let text = msg.content.text.clone();
        let html = msg.content.html.clone();
        let built = match (text, html) {
            (Some(t), Some(h)) => builder.multipart(MultiPart::alternative_plain_html(t, h)),
            (Some(t), None) => builder.singlepart(SinglePart::plain(t)),
            (None, Some(h)) => builder.singlepart(SinglePart::html(h)),
            (None, None) => return Err(BuildError::MissingContent("text or html")),
        };
        built.map_err(|e| BuildError::Invalid(format!("cannot build the message: {e}")))
    }
}

/// `Idempotency-Key`-like, in the message itself: the delivery key, so a
/// receiver (or a test) can tell repeats of one delivery apart.
#[derive(Clone)]
struct DeliveryKey(String);

impl header::Header for DeliveryKey {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("X-Herald-Delivery-Key")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 8058's one-click unsubscribe: the URL, in angle brackets.
#[derive(Clone)]
struct ListUnsubscribe(String);

impl header::Header for ListUnsubscribe {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Clone)]
struct ListUnsubscribePost;

impl header::Header for ListUnsubscribePost {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

impl Provider for Smtp {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "smtp"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Email(to) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-email address"));
        };
        let message = self.message(msg, to)?;
        let envelope = message.envelope();
        let from = envelope.from().map(ToString::to_string).unwrap_or_default();
        let rcpt = envelope
            .to()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let message_id = format!("<{}@{}>", msg.delivery_key, self.message_id_domain);
        http::Request::post(&self.uri)
            .header(http::header::CONTENT_TYPE, "message/rfc822")
            .header(crate::IDEMPOTENCY_KEY, &msg.delivery_key)
            .header(ENVELOPE_FROM, from)
            .header(ENVELOPE_TO, rcpt)
            .header(MESSAGE_ID, message_id)
            .body(Bytes::from(message.formatted()))
            .map_err(|e| BuildError::Invalid(format!("cannot build request: {e}")))
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        let code = resp
            .headers
            .get(SMTP_CODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok());
        let text = String::from_utf8_lossy(&resp.body);
        let reason = crate::clip(&format!(
            "smtp {} {}",
            code.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            text.trim()
        ));
        classify_reply(code, &text, reason, &resp.headers)
    }
}

/// SMTP replies by what they mean for the message (RFC 5321 §4.2, and the
/// enhanced status codes of RFC 3463 at the start of the text).
fn classify_reply(
    code: Option<u16>,
    text: &str,
    reason: String,
    headers: &http::HeaderMap,
) -> Outcome {
    let Some(code) = code else {
        return Outcome::Transient {
            reason,
            ambiguous: false,
        };
    };
    let enhanced = text.split_whitespace().next().unwrap_or_default();
    match code {
        200..=299 => Outcome::Accepted {
            vendor_id: headers
                .get(MESSAGE_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
        // "Service not available, closing": how servers say slow down.
        421 => Outcome::RateLimited {
            retry_after: None,
            reason,
        },
        // Authentication required, failed, or too weak: the account's.
        530 | 534 | 535 | 538 => Outcome::Account { reason },
        400..=499 => Outcome::Transient {
            reason,
            ambiguous: false,
        },
        // The mailbox or its domain does not exist (5.1.1, 5.1.2, 5.1.10
        // null MX): a hard bounce, not to be sent to again.
        _ if matches!(enhanced, "5.1.1" | "5.1.2" | "5.1.10") => Outcome::Permanent {
            reason,
            gone: Some(SuppressionReason::Bounce),
        },
        _ => Outcome::permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> Smtp {
        Smtp::new(
            "smtp",
            SmtpConfig {
                host: "mail.example.com".into(),
                port: None,
                tls: SmtpTls::Starttls,
                username: Some("herald".into()),
                password: Some(Secret::new("pw")),
                from_email: "noreply@example.com".into(),
                from_name: Some("Zoë's Shop".into()),
                ca_file: None,
                pool_size: 4,
                message_id_domain: None,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_mime_message_with_both_parts_and_its_envelope() {
        let mut m = message(Channel::Email, Address::Email("ann@example.org".into()));
        m.content.subject = Some("Ihr Code: 123456 — gültig 10 Minuten 🔐".into());
        let req = adapter().build(&m).expect("builds");
        assert_eq!(req.uri(), "smtp://mail.example.com:587/");
        assert_eq!(req.headers()[ENVELOPE_FROM], "noreply@example.com");
        assert_eq!(req.headers()[ENVELOPE_TO], "ann@example.org");
        let body = String::from_utf8(req.body().to_vec()).expect("ascii on the wire");
        assert!(body.is_ascii(), "every header and part is encoded for SMTP");
        let key = &m.delivery_key;
        assert!(
            body.contains(&format!("Message-ID: <{key}@example.com>")),
            "{body}"
        );
        assert!(body.contains("Date: "), "{body}");
        assert!(body.contains("multipart/alternative"), "{body}");
        assert!(
            body.contains("text/plain") && body.contains("text/html"),
            "{body}"
        );
        let subject = body
            .split("\r\n")
            .skip_while(|l| !l.starts_with("Subject: "))
            .take_while(|l| l.starts_with("Subject: ") || l.starts_with(' '))
            .collect::<String>();
        assert!(
            subject.starts_with("Subject: Ihr Code: 123456") && subject.contains("=?utf-8?b?"),
            "the UTF-8 words are encoded: {subject}"
        );
        assert!(
            body.contains(&format!("X-Herald-Delivery-Key: {key}")),
            "{body}"
        );
        assert_eq!(
            req.headers()[MESSAGE_ID].to_str().ok(),
            Some(format!("<{key}@example.com>").as_str())
        );
    }

    #[test]
    fn replies_classify_by_code_and_enhanced_status() {
        let smtp = adapter();
        let reply = |code: &str, text: &str| {
            smtp.classify(&response(
                200,
                &[(SMTP_CODE, code), (MESSAGE_ID, "<k@example.com>")],
                text,
            ))
        };
        assert_eq!(
            reply("250", "2.0.0 Ok: queued as ABC"),
            Outcome::Accepted {
                vendor_id: Some("<k@example.com>".into())
            }
        );
        assert_eq!(reply("451", "4.3.0 try again later").label(), "transient");
        assert_eq!(reply("450", "4.2.1 mailbox busy").label(), "transient");
        assert_eq!(
            reply("421", "4.7.0 too many messages").label(),
            "rate_limited"
        );
        assert_eq!(reply("535", "5.7.8 bad credentials").label(), "account");
        assert_eq!(
            reply("530", "5.7.0 authentication required").label(),
            "account"
        );
        assert!(matches!(
            reply("550", "5.1.1 <x@example.org>: no such user"),
            Outcome::Permanent {
                gone: Some(SuppressionReason::Bounce),
                ..
            }
        ));
        assert_eq!(
            reply("550", "5.7.1 message refused as spam"),
            Outcome::permanent("smtp 550 5.7.1 message refused as spam"),
            "a policy refusal says nothing against the address"
        );
        assert_eq!(reply("552", "5.3.4 message too big").label(), "permanent");
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let ok = || SmtpConfig {
            host: "mail.example.com".into(),
            port: None,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from_email: "a@example.com".into(),
            from_name: None,
            ca_file: None,
            pool_size: 1,
            message_id_domain: None,
        };
        assert!(Smtp::new("s", ok()).is_ok());
        assert_eq!(ok().port(), 25);
        assert!(Smtp::new(
            "s",
            SmtpConfig {
                host: " ".into(),
                ..ok()
            }
        )
        .is_err());
        assert!(Smtp::new(
            "s",
            SmtpConfig {
                username: Some("u".into()),
                ..ok()
            }
        )
        .is_err());
        assert!(Smtp::new(
            "s",
            SmtpConfig {
                from_email: "nobody".into(),
                ..ok()
            }
        )
        .is_err());
        assert!(Smtp::new(
            "s",
            SmtpConfig {
                pool_size: 0,
                ..ok()
            }
        )
        .is_err());
    }
}
